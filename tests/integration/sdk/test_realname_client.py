"""IdentityClient's real-name methods against the in-process server."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2

from tests.document_samples import png_sample
from tests.integration.conftest import Harness
from tests.integration.flows import LOGIN_NAME, PHONE, login, register
from tests.integration.sdk.test_identity_client import client_for
from xiaohe.identity.client import (
    ConsentRequired,
    DocumentKind,
    FailedPrecondition,
    IdType,
    InvalidArgument,
    RealNameState,
)
from xiaohe.identity.v1 import realname_pb2


async def test_upload_submit_and_status(h: Harness, tmp_path: Path) -> None:
    """I2, D1: the SDK uploads bytes and files in chunks, raises ConsentRequired without the
    consent and InvalidArgument for a mismatched name; submit and status work end to end."""
    await register(h, LOGIN_NAME, PHONE)
    token = (await login(h, LOGIN_NAME)).access_token
    scan = png_sample(rows=2000)  # several chunks
    async with client_for(h) as identity:
        with pytest.raises(ConsentRequired):
            await identity.upload_document(
                scan, kind=DocumentKind.DOCUMENT_KIND_ID_SCAN, access_token=token
            )
        front = await identity.upload_document(
            scan,
            kind=DocumentKind.DOCUMENT_KIND_ID_SCAN,
            access_token=token,
            file_name="front.png",
            separate_consent=True,
        )
        path = tmp_path / "back.png"
        path.write_bytes(png_sample())
        back = await identity.upload_document(
            path, kind=DocumentKind.DOCUMENT_KIND_ID_SCAN, access_token=token, chunk_size=100
        )
        info = await h.container.documents.info(back.document_id)
        assert info is not None
        assert info.file_name == "back.png"
        with pytest.raises(InvalidArgument) as mismatch:
            await identity.upload_document(
                png_sample(),
                kind=DocumentKind.DOCUMENT_KIND_ID_SCAN,
                access_token=token,
                file_name="scan.pdf",
            )
        assert "header.file_name" in mismatch.value.violations
        with pytest.raises(ValueError, match="chunk_size"):
            await identity.upload_document(
                scan, kind=DocumentKind.DOCUMENT_KIND_ID_SCAN, access_token=token, chunk_size=0
            )
        start = timestamp_pb2.Timestamp()
        start.FromSeconds(int(h.clock.now() - 86400 * 30))
        submitted = await identity.submit_natural_person(
            token,
            realname_pb2.SubmitNaturalPersonRequest(
                name="张三丰",
                id_type=IdType.ID_TYPE_RESIDENT_ID_CARD,
                id_number="11010519491231002X",
                valid_from=start,
                address="青海省西宁市",
                document_ids=[front.document_id, back.document_id],
            ),
        )
        assert submitted.state == RealNameState.REAL_NAME_STATE_VERIFIED
        status = await identity.get_real_name_status(token)
        assert (status.state, status.real_name_level) == (
            RealNameState.REAL_NAME_STATE_VERIFIED,
            1,
        )
        with pytest.raises(FailedPrecondition):
            await identity.submit_legal_person(
                token,
                realname_pb2.SubmitLegalPersonRequest(
                    organization_name="青海小禾科技服务有限公司",
                    organization_type=1,
                    uscc="91350100M000100Y43",
                    representative_type=1,
                    representative_name="张三丰",
                    representative_id_type=IdType.ID_TYPE_RESIDENT_ID_CARD,
                    representative_id_number="11010519491231002X",
                    address="青海",
                    licence_document_ids=[front.document_id],
                    publicity_screenshot_document_ids=[front.document_id],
                    representative_id_document_ids=[back.document_id],
                ),
            )
