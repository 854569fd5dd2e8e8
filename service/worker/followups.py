"""Follow-up messages on their way to an agent.

Every follow-up is first recorded (``Store.add_followup``, once per comment), then
sent in order. A chat takes a message at any time (Coder queues it while the agent
works); a task has no queue and answers "busy" while its agent works, so the message
stays held and a later status check sends it when the agent is ready.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.coder.base import CoderBackend, CreatedWork
from service.logging import get_logger
from service.store.base import Store

log = get_logger("service.worker")


@dataclass(frozen=True)
class Sent:
    """What ``send_held`` did: ``sent`` messages went out, ``left`` still wait, and
    ``gone`` says the task or chat no longer exists (what waited was dropped)."""

    sent: int
    left: int
    gone: bool = False


async def send_held(store: Store, backend: CoderBackend, work: CreatedWork, *,
                    delegation_id: int, now: float) -> Sent:
    """Send the delegation's held follow-ups, oldest first, until the agent cannot take
    more. Raises ``RemoteError`` as Coder answers (what was not sent stays held)."""
    waiting = await store.queued_followups(delegation_id)
    sent = 0
    for index, followup in enumerate(waiting):
        outcome = await backend.send(work, followup.text)
        if outcome == "sent":
            await store.settle_followup(followup.id, sent=True, now=now)
            sent += 1
            continue
        if outcome == "gone":
            for dropped in waiting[index:]:
                await store.settle_followup(dropped.id, sent=False, now=now)
            log.info("followups_dropped", reason="the work is gone", count=len(waiting) - index)
            return Sent(sent, 0, gone=True)
        log.info("followups_held", reason=outcome, count=len(waiting) - index)
        return Sent(sent, len(waiting) - index)
    return Sent(sent, 0)
