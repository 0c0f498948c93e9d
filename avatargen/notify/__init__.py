"""Messages to the owner (Apprise): what happened, what it costs, what to do, for an owner who is not watching.

`Notifier` filters and rate-limits the owner's events and hands them to a `Sender`, which delivers them off
the event loop; `Watcher` turns what the generator's status shows into those events. Only the process that
runs the generator watches, so with several workers or replicas each event is sent once.
"""

from avatargen.notify.notifier import Notifier
from avatargen.notify.sender import Delivery, Message, Sender, not_understood, try_urls
from avatargen.notify.watch import Watcher

__all__ = ["Delivery", "Message", "Notifier", "Sender", "Watcher", "not_understood", "try_urls"]
