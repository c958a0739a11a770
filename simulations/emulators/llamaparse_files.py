"""The emulated LlamaCloud files API, `/api/v1/beta/files`, which v2 parses by `file_id`.

`POST` (multipart `file` and `purpose`, both required, and an optional
`external_file_id`), `GET` (a list, `{items, next_page_token}`), and `GET`
and `DELETE .../{file_id}`. A file is `{id, name, project_id, file_type,
purpose, external_file_id, expires_at}` (the SDK requires `id`, `name` and
`project_id`). Files never expire here, and the documented limit (50
uploads per 5 s per project) is not modelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from providers.transport import HttpResponse
from simulations.emulators.ids import Ids
from simulations.emulators.llamaparse_shared import (
    Rejected,
    authenticate,
    invalid,
    project_of,
    read_form,
)
from simulations.emulators.multipart import UploadedFile
from simulations.emulators.routing import Incoming, Route, json_response

FILES: Final = "/api/v1/beta/files"


@dataclass(frozen=True, slots=True)
class _File:
    id: str
    project_id: str
    upload: UploadedFile
    purpose: str
    external_file_id: str | None

    def describe(self) -> dict[str, Any]:
        name = self.upload.filename
        return {
            "id": self.id,
            "name": name,
            "project_id": self.project_id,
            "file_type": name.rsplit(".", 1)[-1].lower() if "." in name else None,
            "purpose": self.purpose,
            "external_file_id": self.external_file_id,
            "expires_at": None,
        }


class FilesApi:
    """`/api/v1/beta/files`: upload (multipart `file` + `purpose`), get, list, delete."""

    def __init__(self, ids: Ids, api_key: str | None) -> None:
        self._ids = ids
        self._api_key = api_key
        self._files: dict[str, _File] = {}
        self.routes: Sequence[Route] = (
            Route("POST", FILES, self._create),
            Route("GET", FILES, self._list),
            Route("GET", f"{FILES}/{{file_id}}", self._get),
            Route("DELETE", f"{FILES}/{{file_id}}", self._delete),
        )

    def clear(self) -> None:
        self._files.clear()

    def find(self, file_id: str) -> UploadedFile:
        found = self._files.get(file_id)
        if found is None:
            raise Rejected(404, f"File {file_id} not found")
        return found.upload

    async def _create(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
            form = read_form(incoming)
            upload, purpose = form.files.get("file"), form.value("purpose")
            if upload is None:
                raise invalid("file", "Field required")
            if not purpose:
                raise invalid("purpose", "Field required")
        except Rejected as rejected:
            return rejected.response
        record = _File(
            f"file-{self._ids.job_id()}",
            project_of(incoming),
            upload,
            purpose,
            form.value("external_file_id"),
        )
        self._files[record.id] = record
        return json_response(200, record.describe())

    async def _list(self, incoming: Incoming, _params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
        except Rejected as rejected:
            return rejected.response
        items = [record.describe() for record in self._files.values()]
        return json_response(200, {"items": items, "next_page_token": None})

    async def _get(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
            self.find(params["file_id"])
        except Rejected as rejected:
            return rejected.response
        return json_response(200, self._files[params["file_id"]].describe())

    async def _delete(self, incoming: Incoming, params: Mapping[str, str]) -> HttpResponse:
        try:
            authenticate(incoming, self._api_key)
            self.find(params["file_id"])
        except Rejected as rejected:
            return rejected.response
        del self._files[params["file_id"]]
        return HttpResponse.build(204, {}, b"")
