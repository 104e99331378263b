"""Notes of which image of an owner is made from which bytes: a later upload of the same bytes by
the same owner copies that image's renditions instead of resizing again (`pipeline.consumer.jobs`).
Each note is an item beside the owner's records, under an id no image can have."""

from __future__ import annotations

import contextlib

from pipeline.core.items import ConditionFailed, Equals
from pipeline.core.layout import ImageRef
from pipeline.core.ports import ItemTable

#: The prefix of a note's id: no image id can start with `#`.
DIGEST_PREFIX = "#sha256:"


class DigestNotes:
    def __init__(self, table: ItemTable) -> None:
        self._table = table

    async def remember(self, ref: ImageRef, digest: str) -> None:
        """Note that the owner's image `ref` is made from the bytes with SHA-256 `digest`, for a
        later upload of the same bytes by the same owner to reuse. The note is an item beside
        the owner's records (its id is no valid image id) that no listing index holds."""
        await self._table.put({**_note_key(ref, digest), "of": ref.owner_and_id[1]})

    async def noted(self, ref: ImageRef, digest: str) -> str | None:
        """The image the owner's note of the bytes with SHA-256 `digest` names (`remember`)."""
        note = await self._table.get(_note_key(ref, digest))
        return None if note is None else str(note["of"])

    async def forget(self, ref: ImageRef, digest: str) -> None:
        """Drop the note of `digest` if it names `ref` (the image is deleted)."""
        with contextlib.suppress(ConditionFailed):
            await self._table.delete(_note_key(ref, digest), Equals("of", ref.owner_and_id[1]))


def _note_key(ref: ImageRef, digest: str) -> dict[str, str]:
    """The key of the owner's note of the bytes with SHA-256 `digest` (`DigestNotes.remember`)."""
    return {"user_id": ref.owner_and_id[0], "image_id": DIGEST_PREFIX + digest}
