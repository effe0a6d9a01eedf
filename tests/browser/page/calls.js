// What a web app does against edgefn, through supabase-js as a front end uses it. Every
// helper resolves to a plain object the test reads (never throws): {ok, status, data,
// error: {name, message, status, body}, headers: {...the exposed response headers}}.
"use strict";

const EXPOSED = ["x-request-id", "ratelimit-limit", "ratelimit-remaining", "etag", "cache-control"];

function clientFor(base, token) {
  // supabase-js sends apikey, authorization (from accessToken), x-client-info; with a
  // region, x-region too: every header a preflight must allow
  return supabase.createClient(base, "local-anon-key", { accessToken: async () => token });
}

function headersOf(response) {
  const out = {};
  if (response) for (const name of EXPOSED) out[name] = response.headers.get(name);
  return out;
}

async function describeError(error) {
  const out = { name: error.name, message: String(error.message) };
  // FunctionsHttpError: context is the Response; FunctionsFetchError: the fetch TypeError
  if (error.context && typeof error.context.json === "function") {
    out.status = error.context.status;
    try { out.body = await error.context.json(); } catch (e) { out.body = null; }
  } else if (error.context) {
    out.cause = String(error.context.message || error.context);
  }
  return out;
}

async function invoke(base, token, name, options) {
  const { data, error, response } = await clientFor(base, token).functions.invoke(name, options);
  return {
    ok: !error,
    status: response ? response.status : null,
    data,
    error: error ? await describeError(error) : null,
    headers: headersOf(response),
  };
}

async function pngBlob(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext("2d");
  g.fillStyle = "#3366cc";
  g.fillRect(0, 0, width, height);
  g.fillStyle = "#ffcc00";
  g.fillRect(width / 4, height / 4, width / 2, height / 2);
  return await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

// Loads an image the way a page shows one (an <img>, no credentials, no CORS).
function imageSize(url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve({ width: img.naturalWidth, height: img.naturalHeight });
    img.onerror = () => resolve(null);
    img.src = url;
  });
}

async function uploadInline(base, token, bucket, region) {
  const blob = await pngBlob(64, 48);
  const form = new FormData();
  form.append("bucket", bucket);
  form.append("caption", "drawn on a canvas");  // a field a typical form sends
  form.append("file", blob, "drawing.png");
  const result = await invoke(base, token, "upload-media", { body: form, region });
  result.sentBytes = blob.size;
  if (result.ok) result.image = await imageSize(result.data.data.url);
  return result;
}

// presign -> PUT straight to the bucket with the signed headers -> confirm
async function uploadPresigned(base, token, bucket, region) {
  const blob = await pngBlob(80, 60);
  const presign = await invoke(base, token, "upload-media/presign", {
    body: { bucket, content_type: "image/png", content_length: blob.size, filename: "photo.png" },
    region,
  });
  const out = { presign, sentBytes: blob.size };
  if (!presign.ok) return out;
  const { upload_url, headers, key } = presign.data.data;
  try {
    const put = await fetch(upload_url, { method: "PUT", headers, body: blob });
    out.put = { ok: put.ok, status: put.status, etag: put.headers.get("etag") };
  } catch (e) {
    out.put = { ok: false, error: { name: e.name, message: String(e.message) } };
    return out;
  }
  out.confirm = await invoke(base, token, "upload-media/confirm", { body: { key }, region });
  if (out.confirm.ok) out.image = await imageSize(out.confirm.data.data.url);
  return out;
}

// A PUT of `size` bytes to a presigned URL with its signed headers, for the bucket's CORS
// policy: a refused preflight is a TypeError and no status, as in any web app.
async function putTo(url, headers, size) {
  try {
    const put = await fetch(url, { method: "PUT", headers, body: new Blob([new Uint8Array(size)]) });
    return { ok: put.ok, status: put.status };
  } catch (e) {
    return { ok: false, status: null, error: { name: e.name, message: String(e.message) } };
  }
}

window.edgefnPage = { invoke, uploadInline, uploadPresigned, putTo };
