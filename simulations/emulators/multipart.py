"""`multipart/form-data` bodies, parsed with the standard library's email parser.

A form body is a MIME multipart document missing only its header, so
prefixing `Content-Type: ...` lets `email` split it. Repeated fields are
kept in order, and `name[]` (how Stainless SDKs send lists) is read as
`name`, so `language=en` and `language[]=en` mean the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import unquote


class MultipartError(ValueError):
    """The body is not a readable multipart form."""


@dataclass(frozen=True, slots=True)
class UploadedFile:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        """The first value of `name`, or None."""
        values = self.fields.get(name)
        return values[0] if values else None


def parse_form(content_type: str, body: bytes) -> Form:
    if not content_type.lower().startswith("multipart/form-data"):
        raise MultipartError(f"expected multipart/form-data, got {content_type or 'nothing'}")
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart() or message.defects:
        raise MultipartError("the multipart body could not be split")
    form = Form()
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise MultipartError("a part has no name")
        name = name.removesuffix("[]")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            form.files[name] = UploadedFile(unquote(filename), part.get_content_type(), data)
        else:
            form.fields.setdefault(name, []).append(data.decode("utf-8", "replace"))
    return form
