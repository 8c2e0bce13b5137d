"""Hostile values in every string field: refused with the field named where invalid, and
harmless where valid (they never reach a filter graph or a shell)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from broker.events import Succeeded
from broker.jobs import CaptionJob, CaptionStyle, decode_job
from client.api import SubmitError

HOSTILE = ["a'b", "a:b", "a,b", "a;b", "a[b]", "a\\\\b", "a\\nb", "%{pts}", "x'];movie=/etc/passwd"]

STRING_FIELDS = [
    ("caption", '{{"video": "obj:v", "srt": "obj:s", "style": {{"font": "{v}"}}}}', "$.style.font"),
    ("caption", '{{"video": "obj:v", "srt": "obj:s", "style": {{"color": "{v}"}}}}',
     "$.style.color"),
    ("caption", '{{"video": "obj:v", "srt": "obj:s", "style": {{"outline_color": "{v}"}}}}',
     "$.style.outline_color"),
    ("img2vid", '{{"image": "obj:i", "pad_color": "{v}"}}', "$.pad_color"),
    ("caption", '{{"video": "{v}", "srt": "obj:s"}}', "$.video"),
    ("add_audio", '{{"video": "obj:v", "audio": "{v}"}}', "$.audio"),
    ("img2vid", '{{"image": "{v}"}}', "$.image"),
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(("operation", "template", "path"), STRING_FIELDS)
def test_hostile_strings_are_refused_naming_the_field(operation: str, template: str,
                                                      path: str, value: str) -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        decode_job(operation, template.format(v=value).encode())
    assert path in str(err.value)


@pytest.mark.parametrize("name", ["we'ird:name,with;[all]\\\\of_it_%{pts}"])
async def test_hostile_object_names_are_harmless(client, agent, media_dir: Path,
                                                 tmp_path: Path, name: str) -> None:
    # A valid object name may contain anything; it only names the download, which lands
    # under a generated file name, so the job runs normally.
    receipt = await client.submit(CaptionJob(
        video=await client.upload_input(media_dir / "talk.mp4", name=f"{name}.mp4"),
        srt=await client.upload_input(media_dir / "talk.srt", name=f"{name}.srt")))
    assert isinstance(await client.result(receipt.job_id, timeout_s=60), Succeeded)


async def test_the_client_refuses_an_invalid_job_before_queueing_it(client) -> None:
    with pytest.raises(SubmitError, match=r"\$\.style\.color"):
        await client.submit(CaptionJob(video="obj:v", srt="obj:s",
                                       style=CaptionStyle(color="red")))
