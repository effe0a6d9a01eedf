"""upload-media: Authenticated media upload to Cloudflare R2."""
