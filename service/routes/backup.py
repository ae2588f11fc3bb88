"""POST /v1/admin/backup (admin key): the backup file of this server's data dir, made in this
process, which alone can read the embedded vector store consistently (service/backup.py).
`ragtune backup create` calls it when a running server holds the data dir."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.responses import FileResponse

from service.backup import backup_to_temp
from service.routes import JSONRoute
from service.state import Admin, AppState

router = APIRouter(prefix="/v1/admin", tags=["operations"], route_class=JSONRoute)


@router.post("/backup", response_class=FileResponse,
             responses={200: {"content": {"application/x-tar": {}},
                              "description": "The backup file (service/backup_format.py)."}})
async def backup(state: AppState, _: Admin) -> FileResponse:
    path, remove = await asyncio.to_thread(backup_to_temp, state.settings, state.store)
    return FileResponse(path, media_type="application/x-tar", filename=path.name,
                        background=BackgroundTask(remove))
