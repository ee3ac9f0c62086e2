"""Which stretch of the stream the LM's window still holds (livesum.llm.window_span)."""

import math

from livesum.llm.window_span import WindowSpan


def test_before_anything_is_evicted_the_window_holds_everything_from_the_first_feed() -> None:
    span = WindowSpan(window=100)
    assert span.oldest() == 0.0 and span.held_from() == 0.0  # nothing fed yet
    span.fed(2.0, 40)
    span.fed(9.0, 60)  # exactly full
    assert span.oldest() == 2.0 and span.held_from() == 2.0


def test_a_feed_the_window_holds_part_of_is_where_the_summary_starts_but_not_what_is_held() -> None:
    span = WindowSpan(window=100)
    for start, tokens in ((0.0, 30), (5.0, 30), (10.0, 30), (15.0, 30)):  # 120 tokens: 20 evicted
        span.fed(start, tokens)
    assert span.oldest() == 0.0  # a third of the first feed is still there
    assert span.held_from() == 5.0  # but only from the second one on is every word there
    span.fed(20.0, 10)  # 30 evicted: the first feed is gone whole
    assert span.oldest() == 5.0 and span.held_from() == 5.0
    span.fed(25.0, 35)  # 65 evicted: the second feed is gone, the third cut
    assert span.oldest() == 10.0 and span.held_from() == 15.0


def test_one_feed_larger_than_the_window_leaves_nothing_known_held() -> None:
    span = WindowSpan(window=100)
    span.fed(3.0, 250)
    assert span.oldest() == 3.0 and span.held_from() == math.inf
