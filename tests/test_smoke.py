from __future__ import annotations

from docbatch.core.settings import Settings
from tests.support import Api, invalid_order, run_worker_until, valid_order


async def test_flow_settles_batch(api: Api, settings: Settings) -> None:
    batch_type = await api.insert_batch_type()
    batch = await api.create_batch(batch_type)
    ids = await api.upload_ok(batch, [valid_order(1), valid_order(2), invalid_order(3)])
    assert len(ids) == 3
    response = await api.complete(batch)
    assert response.status_code == 200, response.text
    final = await run_worker_until(api, settings, batch)
    assert final["statusId"] == "Error"
    assert final["validatedRecords"] == 2
    assert final["failedValidatedRecords"] == 1
