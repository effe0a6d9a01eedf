"""The rules without I/O: sniffing, type agreement, keys."""

from __future__ import annotations

import pytest

from functions.upload_media import rules
from functions.upload_media.sniff import sniff
from shared import errors
from tests.functions.upload_media import samples as smp


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (smp.PNG, "image/png"), (smp.JPEG, "image/jpeg"), (b"\xff\xd8\xff\xdb", "image/jpeg"), (smp.GIF, "image/gif"),
        (b"GIF87a", "image/gif"), (smp.WEBP, "image/webp"), (smp.MP4, "video/mp4"), (smp.MOV, "video/quicktime"),
        (smp.WEBM, "video/webm"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "video/mp4"),
        (b"\x00\x00\x00\x18ftypXYZ1\x00\x00\x00\x00XYZ1isom", "video/mp4"),  # unknown major, MP4 compatible
        (smp.MKV, None), (smp.HEIC, None), (b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00avifmif1", None),
        (b"\x00\x00\x00\x18ftyp3gp4\x00\x00\x00\x00isom3gp4", None), (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (smp.HTML, None), (b"%PDF-1.7", None), (b"\x89PNG\r\n", None), (b"", None), (b"\x1a\x45\xdf\xa3", None),
        (b"\x1a\x45\xdf\xa3\x84\x42\x82\x88webm", None),  # DocType length past the header's end
    ],
)
def test_sniff(head: bytes, expected: str | None) -> None:
    assert sniff(head) == expected


@pytest.mark.parametrize(
    ("bucket", "sniffed", "declared", "filename", "code"),
    [
        ("avatars", "image/png", "image/png", "a.png", None),
        ("avatars", "image/jpeg", "image/jpg", "a.JPEG", None),
        ("avatars", "image/jpeg", "IMAGE/JPEG; charset=binary", "a.jfif", None),
        ("avatars", "image/png", "application/octet-stream", "noext", None),
        ("avatars", "image/png", None, None, None),
        ("videos", "video/quicktime", "video/quicktime", "IMG_0001.MOV", None),
        ("videos", "image/png", "video/mp4", "a.mp4", "TYPE_NOT_ALLOWED_IN_BUCKET"),
        ("avatars", "image/png", "video/mp4", None, "CONTENT_TYPE_MISMATCH"),
        ("avatars", "image/png", None, "a.mp4", "EXTENSION_MISMATCH"),
        ("avatars", "image/png", None, "a.png.php", "EXTENSION_MISMATCH"),
        ("avatars", "image/png", None, "C:\\Users\\me\\a.gif", "EXTENSION_MISMATCH"),
        ("avatars", None, "image/png", "a.png", "UNSUPPORTED_FILE_TYPE"),
        (None, "video/mp4", "video/mp4", "a.mp4", None),  # bucket not known yet: any accepted type
    ],
)
def test_type_agreement(bucket: str | None, sniffed: str | None, declared: str | None, filename: str | None, code: str | None) -> None:
    if code is None:
        assert rules.check_type(bucket, sniffed=sniffed, declared=declared, filename=filename) == sniffed
    else:
        with pytest.raises(errors.UnsupportedMediaType) as e:
            rules.check_type(bucket, sniffed=sniffed, declared=declared, filename=filename)
        assert e.value.code == code


def test_keys_are_time_sortable_uuid7_under_the_owner() -> None:
    uid = "7f0c3a52-4c1e-4d6f-9a51-2b7f4f1d9e10"
    ids = [rules.new_object_id(now_ms=ms) for ms in (1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(len(i) == 32 and i[12] == "7" and i[16] in "89ab" for i in ids)
    key = rules.new_key("videos", uid, "video/quicktime")
    parsed = rules.parse_key(key)
    assert (parsed.bucket, parsed.user_id, parsed.content_type) == ("videos", uid, "video/quicktime")
    assert key.startswith(f"videos/{uid}/") and key.endswith(".mov")


def test_caps_by_bucket() -> None:
    from functions.upload_media.settings import MiB, UploadMediaSettings

    s = UploadMediaSettings.load(env={})
    caps = {b: rules.max_bytes(b, s) for b in rules.BUCKETS}
    assert caps == {"avatars": 5 * MiB, "posts": 5 * MiB, "products": 5 * MiB, "covers": 10 * MiB,
                    "backgrounds": 10 * MiB, "videos": 100 * MiB}  # fmt: skip
    assert s.upload_inline_max_bytes == 4 * MiB < 6 * 1000 * 1000  # under Lambda's request cap
    s = UploadMediaSettings.load(env={"UPLOAD_MAX_VIDEO_BYTES": "1000"})
    assert rules.max_bytes("videos", s) == 1000


def test_the_handler_import_loads_no_sdk() -> None:
    import json
    import subprocess
    import sys

    code = (
        "import sys, json; import functions.upload_media.handler as h; assert callable(h.handler); "
        "print(json.dumps([m for m in ('boto3', 'botocore', 'psycopg', 'redis', 'hiredis', 'sentry_sdk') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
