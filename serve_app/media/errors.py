"""The one exception the media layer raises for anything a client sent or pointed at."""

from __future__ import annotations


class MediaError(ValueError):
    """A user-facing reason the media item cannot be used; the API turns it into an HTTP 400.

    ``str(e)`` is the complete message. Messages raised by the loader start with the content
    part's location (``MediaSpec.where``, e.g. ``"messages[0].content[1]: ..."``).
    """

    def with_where(self, where: str) -> "MediaError":
        """The same error with ``where`` prefixed (once)."""
        msg = str(self)
        if where and not msg.startswith(where + ":"):
            msg = f"{where}: {msg}"
        err = type(self)(msg)
        err.__cause__ = self.__cause__ or self
        return err


class AddressRefused(MediaError):
    """A URL's host is (or resolves to) an address the policy does not allow."""


class MediaTooLarge(MediaError):
    """Bytes, pixels, frames or duration above a configured limit."""
