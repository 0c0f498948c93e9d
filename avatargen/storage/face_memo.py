"""One page view, one face: which avatar each visitor got, remembered for `serving.same_face_for`.

A page that shows the avatar at two sizes sends two requests (often to two worker processes, or two
replicas); both must show the same person. So the first answer is remembered per visitor (their IPv4 address
or IPv6 /64: `server.addresses.visitor_key`, never a wider network, so a unique is never shown to a
neighbour) in a store every process shares (`avatargen.storage.protocols.FaceStore`: SQLite under
`server.data_dir`, or Redis keys that expire). A unique's variants are kept in that record, for that
visitor only, and vanish with it when the window ends: the unique itself left its bucket when it was
claimed, so no other visitor can ever get it.

Each process also remembers the faces it has seen (`FaceMemo`), so a visitor's repeat requests to the
same process answer from memory; only a visitor new to this process costs a look at the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from avatargen.storage.models import Face
from avatargen.storage.protocols import FaceStore

# Faces one process remembers; the oldest are dropped first. A unique's record holds its variants (tens
# of kB), but uniques are rationed by the allowance, so few are within their window at any time.
REMEMBERED_FACES = 10_000


class FaceMemo:
    """The faces this process has seen, by visitor, until their window ends (event loop only)."""

    def __init__(self, store: FaceStore, window: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.window = window
        self.clock = clock
        self._faces: OrderedDict[str, Face] = OrderedDict()
        self._choosing: dict[str, asyncio.Future[Face | None]] = {}

    def seen(self, visitor: str) -> Face | None:
        """The visitor's face if this process knows it and its window is still open; no I/O."""
        face = self._faces.get(visitor)
        if face is not None and face.until <= self.clock():
            del self._faces[visitor]
            return None
        return face

    async def being_chosen(self, visitor: str) -> Face | None:
        """The face another request of this visitor is choosing right now in this process, once chosen (a
        page's two <img> requests arrive together); None when none is being chosen, or none was."""
        pending = self._choosing.get(visitor)
        return None if pending is None else await asyncio.shield(pending)

    @contextlib.contextmanager
    def choosing(self, visitor: str) -> Iterator[None]:
        """While a request chooses this visitor's face, their other requests here wait for it (`being_chosen`)."""
        pending = self._choosing[visitor] = asyncio.get_running_loop().create_future()
        try:
            yield
        finally:
            if not pending.done():
                pending.set_result(None)
            if self._choosing.get(visitor) is pending:
                del self._choosing[visitor]

    async def recall(self, visitor: str) -> Face | None:
        """The visitor's face within its window, from memory or the shared store."""
        if self.window <= 0:
            return None
        face = self.seen(visitor)
        if face is None and (face := await self.store.get(visitor, self.clock())) is not None:
            self._note(visitor, face)
        return face

    async def remember(self, visitor: str, kind: str, image_id: str, variants: bytes | None = None) -> Face:
        """The visitor got this image now: they get it again until the window ends, in every process."""
        face = self._face(kind, image_id, variants)
        if self.window > 0:
            await self.store.put(visitor, face, self.clock())  # remembered here once every process can know it
            self._note(visitor, face)
        return face

    def _face(self, kind: str, image_id: str, variants: bytes | None) -> Face:
        return Face(kind, image_id, self.clock() + self.window, variants)

    def forget_image(self, image_id: str) -> None:
        """An image left its bucket (deleted, retired): no visitor's memory points at it any more here."""
        for visitor in [visitor for visitor, face in self._faces.items() if face.id == image_id]:
            del self._faces[visitor]

    def _note(self, visitor: str, face: Face) -> None:
        if (pending := self._choosing.get(visitor)) is not None and not pending.done():
            pending.set_result(face)
        self._faces[visitor] = face
        self._faces.move_to_end(visitor)
        # Oldest first: those whose window ended go now (a unique's variants with them), then any beyond the bound.
        while self._faces and (len(self._faces) > REMEMBERED_FACES
                               or next(iter(self._faces.values())).until <= self.clock()):
            self._faces.popitem(last=False)
