"""What a listing asks for: its order (by creation or by id, either way) and its filters (a
state, a piece of the id or file name). Filters are applied to the records as they are read,
as DynamoDB's own filter expressions would be, so a filtered page reads at most `SCAN_BUDGET`
records and may come back short (even empty) with a cursor to go on from: one request's work
is bounded whatever the caller has stored, and a caller with many images slows only itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

from pipeline.core.errors import InvalidField
from pipeline.core.image_record import ImageRecord, State

Sort = Literal["created", "id"]
SORTS: Final = get_args(Sort)
STATES: Final = get_args(State)
#: Records one filtered listing request reads at most, and how many it reads at a time.
SCAN_BUDGET: Final = 1000
SCAN_CHUNK: Final = 200
#: The longest search text (ids are 64 characters at most; file names are capped too).
MAX_TEXT: Final = 100


@dataclass(frozen=True)
class Listing:
    """A listing's order and filters; the default is the API's first: newest first, everything."""

    sort: Sort = "created"
    descending: bool = True
    state: State | None = None
    #: Case-folded; matched anywhere in the image id or the original's file name.
    text: str | None = None

    @classmethod
    def parse(cls, sort: str | None, order: str | None, state: str | None, text: str | None) -> Listing:
        """From the query's `sort`, `order`, `status` and `q` (each optional, each checked)."""
        sort = sort or "created"
        if sort not in SORTS:
            raise InvalidField(f"sort must be one of {', '.join(SORTS)}")
        if order not in (None, "", "asc", "desc"):
            raise InvalidField("order must be asc or desc")
        # Newest first, or ids from A; either way round on request.
        descending = order == "desc" if order else sort == "created"
        if state not in (None, "") and state not in STATES:
            raise InvalidField(f"status must be one of {', '.join(STATES)}")
        if text is not None and len(text) > MAX_TEXT:
            raise InvalidField(f"q must be at most {MAX_TEXT} characters")
        return cls(sort, descending, state or None, text.casefold() if text and text.strip() else None)  # type: ignore[arg-type]

    @property
    def order(self) -> str:
        """What a cursor is bound to: a cursor of one order is refused by another."""
        return f"{self.sort}-{'desc' if self.descending else 'asc'}"

    @property
    def filtered(self) -> bool:
        return self.state is not None or self.text is not None

    def matches(self, record: ImageRecord) -> bool:
        if self.state is not None and record.state != self.state:
            return False
        if self.text is None:
            return True
        name = record.item.get("file_name")
        return self.text in record.image_id.casefold() or (
            isinstance(name, str) and self.text in name.casefold()
        )
