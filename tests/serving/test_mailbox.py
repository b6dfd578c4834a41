"""The HTTP front's mailbox: a scheduler thread's burst of events reaches the event loop whole, in order, with
one wake-up instead of one per event."""

import asyncio
import threading

from fedintel.serving.app import LoopMailbox


class CountingMailbox(LoopMailbox):
    flushes = 0

    def _flush(self) -> None:
        self.flushes += 1
        super()._flush()


def test_a_burst_from_another_thread_arrives_in_order_with_few_wakeups():
    async def main():
        box = CountingMailbox(asyncio.get_running_loop())
        queues = [asyncio.Queue() for _ in range(16)]
        steps = 20

        def scheduler():  # 20 decode steps of 16 rows, like the scheduler thread
            for step in range(steps):
                for r, q in enumerate(queues):
                    box.post(q, (r, step))

        t = threading.Thread(target=scheduler)
        t.start()
        got = [[await q.get() for _ in range(steps)] for q in queues]
        t.join()
        return box.flushes, got

    flushes, got = asyncio.run(main())
    assert got == [[(r, s) for s in range(20)] for r in range(16)]
    assert 1 <= flushes < 16 * 20 / 4  # far fewer wake-ups than events


def test_post_after_the_loop_closed_is_dropped_quietly():
    loop = asyncio.new_event_loop()
    box = LoopMailbox(loop)
    loop.close()
    box.post(asyncio.Queue(), "late")  # the server shut down; a scheduler's last token must not raise
