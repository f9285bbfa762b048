"""The delivery queue on its own: ordering, coalescing, outbox bookkeeping, reconnects.

No broker and no files: ``DeliveryQueue`` only decides; the tests play the connection loop's
part (take what ``next`` hands out, report the PUBACK with ``delivered``) and the outbox's part
(report each write with ``stored``, before or after the PUBACK: the send does not wait for it).
"""

from __future__ import annotations

import itertools

import pytest

from monitor.delivery import DeliveryQueue, Entry, Rebirth
from monitor.messages import OutMessage

P = "p/v1"


def signals(asset: str, seq: int) -> OutMessage:
    return OutMessage(f"{P}/{asset}/signals", {"seq": seq}, qos=0, retain=True, expiry=30)


def health(seq: int) -> OutMessage:
    return OutMessage(f"{P}/health/tw", {"seq": seq}, qos=0, retain=True, expiry=90)


def regime(asset: str, seq: int) -> OutMessage:
    return OutMessage(f"{P}/{asset}/regime", {"seq": seq}, qos=1, retain=True)


def event(asset: str, seq: int) -> OutMessage:
    return OutMessage(
        f"{P}/{asset}/events", {"seq": seq, "id": f"s:{asset}:{seq}"}, qos=1, retain=False
    )


def entry(item: Entry | Rebirth | None) -> Entry:
    assert isinstance(item, Entry), item
    return item


def send_all(queue: DeliveryQueue) -> list[OutMessage]:
    """The connection loop on a broker that acknowledges everything: every message handed out,
    in order, each one settled before the next is asked for."""
    sent = []
    while (item := queue.next()) is not None:
        assert isinstance(item, Entry)
        sent.append(item.msg)
        queue.delivered(item)
    return sent


# -- ordering -----------------------------------------------------------------------------------
def test_qos1_messages_leave_in_publish_order_and_before_signals() -> None:
    queue = DeliveryQueue()
    published = [signals("BTC", 1), regime("BTC", 1), event("BTC", 1), regime("ETH", 1)]
    for msg in published:
        queue.add(msg)

    first = entry(queue.next())
    assert first.msg == regime("BTC", 1)
    assert queue.next() is first  # not acknowledged yet: still the one in flight
    assert queue.delivered(first) is None  # in memory only: nothing to delete from an outbox
    assert send_all(queue) == [event("BTC", 1), regime("ETH", 1), signals("BTC", 1)]
    assert queue.next() is None and queue.idle


def test_messages_in_flight_together_are_the_head_in_publish_order_until_delivered() -> None:
    queue = DeliveryQueue()
    published = [
        signals("BTC", 1),
        regime("BTC", 1),
        event("BTC", 1),
        regime("ETH", 1),
        event("ETH", 1),
    ]
    for msg in published:
        queue.add(msg)

    burst = queue.in_flight(3)
    assert [e.msg for e in burst] == [regime("BTC", 1), event("BTC", 1), regime("ETH", 1)]
    assert queue.in_flight(3) == burst  # none acknowledged: the same again (a new connection)
    queue.delivered(burst[0])
    assert [e.msg for e in queue.in_flight(3)] == [
        event("BTC", 1),
        regime("ETH", 1),
        event("ETH", 1),
    ]
    for sent in burst[1:]:
        queue.delivered(sent)
    assert not queue.acknowledged
    assert send_all(queue) == [event("ETH", 1), signals("BTC", 1)]
    assert queue.acknowledged and queue.idle


def test_a_message_dropped_from_a_burst_in_flight_leaves_the_others_in_order() -> None:
    queue = DeliveryQueue(max_queued=3)
    for seq in (1, 2, 3):
        queue.add(regime("BTC", seq))
    burst = queue.in_flight(8)
    queue.add(regime("BTC", 4))  # full: the oldest in memory is the first of the burst
    assert queue.dropped == 1
    for sent in burst:  # their PUBACKs arrive anyway
        queue.delivered(sent)
    assert send_all(queue) == [regime("BTC", 4)]


def test_acknowledged_counts_qos1_messages_only_and_idle_counts_everything() -> None:
    queue = DeliveryQueue()
    assert queue.acknowledged and queue.idle and queue.pending == 0
    queue.add(signals("BTC", 1))
    assert queue.acknowledged and not queue.idle and queue.pending == 1
    queue.add(regime("BTC", 1))
    assert not queue.acknowledged and queue.pending == 2

    queue.delivered(entry(queue.next()))
    assert queue.acknowledged  # the signals still wait: they do not count
    assert not queue.idle and queue.pending == 1
    queue.delivered(entry(queue.next()))
    assert queue.idle and queue.pending == 0


# -- coalescing ---------------------------------------------------------------------------------
def test_only_the_newest_signals_per_topic_wait_in_order_of_their_last_update() -> None:
    queue = DeliveryQueue()
    for msg in (signals("BTC", 1), signals("ETH", 1), health(1), signals("BTC", 2), health(2)):
        queue.add(msg)
    assert queue.pending == 3
    assert send_all(queue) == [signals("ETH", 1), signals("BTC", 2), health(2)]


def test_qos1_messages_are_never_coalesced() -> None:
    queue = DeliveryQueue()
    msgs = [regime("BTC", 1), regime("BTC", 2), regime("BTC", 3)]
    for msg in msgs:
        queue.add(msg)
    assert send_all(queue) == msgs


def test_a_rebirth_republishes_the_newest_retained_message_per_topic_first() -> None:
    queue = DeliveryQueue()
    for msg in (regime("BTC", 1), signals("BTC", 1), event("BTC", 1), regime("BTC", 2)):
        queue.add(msg)
    assert queue.retained() == [regime("BTC", 2), signals("BTC", 1)]  # events are not retained
    send_all(queue)
    queue.add(signals("BTC", 2))

    queue.request_rebirth()
    queue.request_rebirth()  # requests before it is handed out: one rebirth
    assert not queue.idle
    assert queue.next() == Rebirth((regime("BTC", 2), signals("BTC", 2)))
    assert send_all(queue) == [signals("BTC", 2)]  # then the queue as it was
    assert queue.idle


# -- the outbox's bookkeeping -------------------------------------------------------------------
def test_only_unretained_qos1_messages_go_to_the_outbox() -> None:
    queue = DeliveryQueue(outbox=True)
    assert queue.add(signals("BTC", 1)) is None
    assert queue.add(regime("BTC", 1)) is None  # state: the next session republishes it
    stored = queue.add(event("BTC", 1))
    assert stored is not None and stored.msg == event("BTC", 1) and stored.storing
    assert queue.storing == 1
    assert DeliveryQueue(outbox=False).add(event("BTC", 1)) is None  # no outbox to write to


def test_an_event_is_sent_while_its_outbox_write_is_under_way_in_publish_order() -> None:
    queue = DeliveryQueue(outbox=True)
    queue.add(regime("BTC", 1))
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    queue.add(signals("BTC", 1))
    queue.request_rebirth()
    # The send does not wait for the disk: the rebirth, then the messages as published, the
    # event while its write is still under way.
    assert isinstance(queue.next(), Rebirth)
    state = entry(queue.next())
    assert state.msg == regime("BTC", 1)
    assert queue.delivered(state) is None  # in memory only
    assert queue.next() is ev and ev.storing
    assert not queue.acknowledged and not queue.idle

    assert queue.stored(ev, 7) is None  # written before its PUBACK: nothing to delete yet
    assert not ev.storing and ev.outbox_id == 7 and queue.storing == 0
    assert queue.delivered(ev) == 7  # its row is deleted now, after the PUBACK
    assert send_all(queue) == [signals("BTC", 1)]


def test_an_event_acknowledged_before_its_write_is_done_has_its_row_deleted_once_written() -> None:
    queue = DeliveryQueue(outbox=True)
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    assert queue.next() is ev
    assert queue.delivered(ev) is None  # no row yet to delete
    # The broker has it: acknowledged and idle, though its write is still under way.
    assert queue.acknowledged and queue.idle and queue.pending == 0
    assert queue.storing == 1
    assert queue.stored(ev, 7) == 7  # the write reports its row: delete it now, not leak it
    assert queue.storing == 0
    assert queue.stored(ev, 7) is None  # a second report of the same write changes nothing


def test_a_write_that_fails_after_the_puback_leaves_nothing_to_delete() -> None:
    queue = DeliveryQueue(outbox=True)
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    assert queue.next() is ev
    assert queue.delivered(ev) is None
    assert queue.stored(ev, None) is None  # the broker has it; there is no row
    assert queue.storing == 0 and queue.idle


@pytest.mark.parametrize(
    "reports",
    # Every order of 3 write reports (W) and 3 PUBACKs (A): writes report in call order,
    # PUBACKs come in publish order, either may run ahead of the other.
    sorted({"".join(p) for p in itertools.permutations("WWWAAA")}),
)
def test_each_row_is_deleted_once_and_in_id_order_however_writes_and_pubacks_interleave(
    reports: str,
) -> None:
    queue = DeliveryQueue(outbox=True)
    writing = [queue.add(event("BTC", seq)) for seq in (1, 2, 3)]
    written = iter(zip(writing, (1, 2, 3), strict=True))
    deleted = []
    for report in reports:
        if report == "W":
            ev, row = next(written)
            assert ev is not None
            deleted.append(queue.stored(ev, row))
        else:
            deleted.append(queue.delivered(entry(queue.next())))
    assert [row for row in deleted if row is not None] == [1, 2, 3]
    assert queue.idle and queue.storing == 0


def test_a_failed_outbox_write_keeps_the_event_in_memory() -> None:
    queue = DeliveryQueue(outbox=True)
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    assert queue.stored(ev, None) is None
    assert not ev.durable
    assert queue.next() is ev
    assert queue.delivered(ev) is None  # no row to delete
    assert queue.stored(ev, 3) is None  # a second report of the same write changes nothing
    assert ev.outbox_id is None and queue.storing == 0


def test_what_an_earlier_process_left_goes_first_in_its_order() -> None:
    queue = DeliveryQueue(outbox=True)
    ev = queue.add(event("BTC", 9))
    assert ev is not None
    queue.resume([(4, event("BTC", 4)), (5, event("ETH", 1))])
    assert queue.pending == 3
    acked = []
    while (item := queue.next()) is not None:
        if item is ev:
            assert ev.storing  # handed out after the earlier ones, its write still under way
            assert queue.stored(ev, 6) is None
        acked.append(queue.delivered(entry(item)))
    assert acked == [4, 5, 6]


def test_a_full_queue_drops_the_oldest_message_in_memory_never_one_in_the_outbox() -> None:
    queue = DeliveryQueue(max_queued=3, outbox=True)
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    queue.stored(ev, 1)
    queue.add(regime("BTC", 1))
    queue.add(regime("BTC", 2))
    queue.add(regime("BTC", 3))  # full: regime 1, the oldest in memory, goes
    assert queue.dropped == 1 and queue.pending == 3
    ev2 = queue.add(event("BTC", 2))  # outbox-bound: never a reason to drop, the queue grows
    assert ev2 is not None
    queue.stored(ev2, 2)
    assert queue.dropped == 1 and queue.pending == 4
    assert send_all(queue) == [event("BTC", 1), regime("BTC", 2), regime("BTC", 3), event("BTC", 2)]


def test_a_full_queue_never_drops_an_event_whose_write_is_under_way_even_in_flight() -> None:
    queue = DeliveryQueue(max_queued=2, outbox=True)
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    assert queue.next() is ev  # in flight, its write not done
    queue.add(regime("BTC", 1))
    queue.add(regime("BTC", 2))  # full: the oldest in memory is regime 1, not the event
    assert queue.dropped == 1
    assert queue.delivered(ev) is None
    assert queue.stored(ev, 1) == 1
    assert send_all(queue) == [regime("BTC", 2)]


def test_an_event_whose_write_failed_may_be_dropped_like_any_in_memory() -> None:
    queue = DeliveryQueue(max_queued=2, outbox=True)
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    queue.stored(ev, None)  # in memory only from here
    queue.add(regime("BTC", 1))
    queue.add(regime("BTC", 2))  # full: the event is now the oldest in memory
    assert queue.dropped == 1
    assert send_all(queue) == [regime("BTC", 1), regime("BTC", 2)]


def test_a_message_dropped_while_in_flight_does_not_take_the_next_one_with_it() -> None:
    queue = DeliveryQueue(max_queued=2)
    queue.add(regime("BTC", 1))
    in_flight = entry(queue.next())
    queue.add(regime("BTC", 2))
    queue.add(regime("BTC", 3))  # full: the one in flight is the oldest in memory
    assert queue.dropped == 1
    assert queue.delivered(in_flight) is None  # its PUBACK arrives anyway
    assert send_all(queue) == [regime("BTC", 2), regime("BTC", 3)]


# -- across a reconnect -------------------------------------------------------------------------
def test_a_message_in_flight_when_the_connection_drops_is_sent_again_first() -> None:
    queue = DeliveryQueue(outbox=True)
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    queue.stored(ev, 11)
    queue.add(regime("BTC", 2))
    queue.add(signals("BTC", 1))

    # First connection: the event is handed out, then the connection drops before its PUBACK
    # (the connection loop never calls ``delivered``).
    assert queue.next() is ev
    # Meanwhile the pipeline keeps publishing.
    queue.add(signals("BTC", 2))
    ev2 = queue.add(event("BTC", 2))
    assert ev2 is not None
    queue.stored(ev2, 12)

    # Next connection: the same event again, then the rest in publish order, each row acked
    # once; the signals coalesced to the newest while the broker was away.
    assert queue.next() is ev
    acked = [queue.delivered(ev)]
    sent = []
    while (item := queue.next()) is not None:
        sent.append(entry(item).msg)
        acked.append(queue.delivered(entry(item)))
    assert sent == [regime("BTC", 2), event("BTC", 2), signals("BTC", 2)]
    assert [i for i in acked if i is not None] == [11, 12]


@pytest.mark.parametrize("written_first", [False, True])
def test_an_event_in_flight_and_still_being_written_when_the_connection_drops_is_sent_again(
    written_first: bool,
) -> None:
    queue = DeliveryQueue(outbox=True)
    ev = queue.add(event("BTC", 1))
    assert ev is not None
    queue.add(regime("BTC", 2))
    assert queue.next() is ev  # sent, then the connection drops before its PUBACK
    # Next connection: the same event first, whether its write ended in between or not; its
    # row is deleted exactly once, by whichever of the two reports comes last.
    rows = [queue.stored(ev, 11)] if written_first else []
    assert queue.next() is ev
    rows.append(queue.delivered(ev))
    if not written_first:
        rows.append(queue.stored(ev, 11))
    assert [row for row in rows if row is not None] == [11]
    assert send_all(queue) == [regime("BTC", 2)]


def test_a_signal_lost_mid_send_is_not_sent_again_the_next_one_replaces_it() -> None:
    queue = DeliveryQueue()
    queue.add(signals("BTC", 1))
    assert entry(queue.next()).msg == signals("BTC", 1)  # handed out: it left the queue
    # The connection drops mid-send: state, not history; nothing waits.
    assert queue.next() is None and queue.idle
    queue.add(signals("BTC", 2))
    assert send_all(queue) == [signals("BTC", 2)]


@pytest.mark.parametrize("outbox", [False, True])
def test_a_rebirth_is_handed_out_once_even_if_the_connection_drops_during_it(
    outbox: bool,
) -> None:
    """The reconnect publishes the birth anyway; the broker keeps the retained messages."""
    queue = DeliveryQueue(outbox=outbox)
    queue.add(regime("BTC", 1))
    queue.request_rebirth()
    assert isinstance(queue.next(), Rebirth)
    # Dropped mid-rebirth: the next connection goes on with the queue.
    assert entry(queue.next()).msg == regime("BTC", 1)
