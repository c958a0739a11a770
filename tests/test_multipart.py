"""The emulator's multipart/form-data parser, beside what aiohttp writes."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from simulations.emulators.multipart import MultipartError, parse_form


def encoded(form: aiohttp.FormData) -> tuple[str, bytes]:
    writer = form()
    body = bytearray()

    class Sink:
        async def write(self, chunk: bytes) -> None:
            body.extend(chunk)

    asyncio.run(writer.write(Sink()))  # type: ignore[arg-type]
    return str(writer.content_type), bytes(body)


def test_fields_files_and_list_names_round_trip_from_aiohttp() -> None:
    form = aiohttp.FormData()
    form.add_field("language[]", "en")
    form.add_field("language", "fr")
    form.add_field("webhook_url", 'https://x.test/hook?a="b"')
    form.add_field(
        "file", b"\r\n--not-a-boundary\r\n\x00", filename="a b.pdf", content_type="application/pdf"
    )
    content_type, body = encoded(form)
    parsed = parse_form(content_type, body)
    assert parsed.fields["language"] == ["en", "fr"]
    assert parsed.value("webhook_url") == 'https://x.test/hook?a="b"'
    upload = parsed.files["file"]
    assert (upload.filename, upload.content_type) == ("a b.pdf", "application/pdf")
    assert upload.data == b"\r\n--not-a-boundary\r\n\x00"


def test_a_quoted_boundary_and_a_default_part_type() -> None:
    body = (
        b"preamble\r\n--xyz\r\n"
        b'Content-Disposition: form-data; name="file"; filename=notes.txt\r\n\r\n'
        b"hello\r\n--xyz--\r\n"
    )
    parsed = parse_form('multipart/form-data; boundary="xyz"', body)
    assert parsed.files["file"].content_type == "text/plain"
    assert parsed.files["file"].data == b"hello"


@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        ("application/json", b"{}", "expected multipart/form-data"),
        ("multipart/form-data", b"--x--", "no boundary"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data", "split"),
        ("multipart/form-data; boundary=x", b"--x\r\nbroken\r\n\r\nv\r\n--x--", "no colon"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--",
            "no name",
        ),
    ],
)
def test_unreadable_forms_are_refused(content_type: str, body: bytes, problem: str) -> None:
    with pytest.raises(MultipartError, match=problem):
        parse_form(content_type, body)
