"""The drain: what a node that got SIGTERM waits for before it stops."""

import trio

from inferad.service import Activity


def test_a_draining_node_waits_until_the_answer_is_sent_after_the_job_ends():
    """Seen in CI: a node that stopped once its job count fell to zero cut the result it was about to send."""
    events = []

    async def main():
        activity = Activity()

        running = trio.Event()

        async def answer_one_request():
            with activity.request():
                with activity.job():
                    running.set()
                    await trio.sleep(0.01)
                events.append("job done")
                await trio.sleep(0.01)
                events.append("answer sent")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_one_request)
            await running.wait()
            assert activity.running == 1
            await activity.idle()
            events.append("stopped")
            assert activity.running == 0

    trio.run(main)
    assert events == ["job done", "answer sent", "stopped"]
