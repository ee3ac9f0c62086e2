"""StreamingEngine: one causal LM reading a live transcript forever, with constant memory.

The transcript flows into a `SinkCache` (attention sinks + pinned summary + rolling window, see
`sink_cache`). Each `feed()` encodes only the new tokens, in chunks, evicting old ones, so a
chunk costs the same at token 4 million as at token 4 thousand. `summarize()`, `ask()` and
`complete()` fork off the live cache: they append an instruction behind the transcript, decode
greedily, then set the cache length back, so the stream is bitwise unchanged and a fork costs
only its own prompt and answer.

Prompt layout, from the tokenizer's chat template (any chat model) or plain text without one:

    <system prompt + start of a user turn saying a live transcript follows>   fixed head
    <transcript ...>                                                          fed text
    "\\n\\n" <instruction> <end of user turn + assistant start>                   a fork

The instruction goes into the same user turn as the transcript rather than into a new one,
because some templates (Gemma's) reject two user turns in a row. The whole head is the attention
sinks (at least `n_sink` tokens), so however long the stream, a fork sees a well-formed turn:
system prompt, turn opening, recent transcript, instruction, turn end. With
`pin_summary`, the latest summary is kept right behind the sinks, so a question about something
evicted long ago can still be answered from it.

The decode loop calls the model's forward directly with the cache and cache-slot positions,
under `torch.inference_mode()`: `generate()` rebuilds logits processors, stopping criteria and
cache checks on each call, which is pure overhead for greedy decoding of one sequence.

Transcript text and questions are user text: they are encoded with special tokens split, so
"<|im_end|>" typed or heard is plain characters, never a turn boundary. A fork never grows the
cache: its prompt and answer are cut to fit the free room reserved at construction.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, PreTrainedModel, RepetitionPenaltyLogitsProcessor

from livesum.config import EngineConfig
from livesum.llm.notes import cut_at_repeat
from livesum.llm.sink_cache import SinkCache, attention_masks

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful assistant that follows a live meeting transcript, summarizes it and answers "
    "questions about it. Stick to what was said."
)
TRANSCRIPT_INTRO = "Here is the live transcript of a meeting, as it is spoken:\n"
# Wording measured on SmolLM2-135M: "summarize the transcript" made it talk about the transcript
# ("The live transcript is now available..."); naming the meeting and what to cover made it summarize.
SUMMARY_INSTRUCTION = "Summarize the meeting above in three short sentences: what was discussed and what was decided."
QUESTION_INSTRUCTION = (
    "Answer this question about the meeting in one or two sentences, using only what the transcript says; "
    "if the transcript does not say, reply \"Not mentioned in the meeting.\" Question: {question}"
)
PINNED_OPEN = "\n[Summary of the earlier transcript: "
PINNED_CLOSE = "]\n"
FORK_ROOM = 128  # fork prompt tokens reserved at least beyond the longest configured answer
STRUCTURED_LOOP_NGRAM = 24  # longer than one JSON object's fixed keys and quotes, shorter than an object
MIN_FORK_ANSWER = 8  # a fork keeps room for at least this many answer tokens when its prompt is cut
# Prompt lookup: a draft is what followed the latest occurrence of the answer's last DRAFT_NGRAM tokens
# (or, failing that, its last MIN_DRAFT_NGRAM); a single token matches too much to be worth a row.
DRAFT_NGRAM, MIN_DRAFT_NGRAM = 3, 2
# A fork whose prompt starts with at least this many tokens of the last prompt run over the same live
# cache copies their entries instead of computing them (`PromptMemo`); fewer are not worth the copy.
MIN_REUSED_PROMPT = 32
TRANSCRIPT_MARK = "@@LIVESUM_TRANSCRIPT@@"
INSTRUCTION_MARK = "@@LIVESUM_INSTRUCTION@@"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptMemo:
    """The cache entries of the last fork prompt run behind the live cache as it is now.

    At the end of a meeting a dozen questions and the notes' forks all start with the same earlier
    summaries; each prompt's entries depend only on the live cache and the tokens before them (causal
    attention), so a fork whose prompt shares a prefix with this one copies those entries instead of
    running them again. Dropped whenever the live cache changes (`StreamingEngine.ingested`), so it holds
    memory only between feeds and never outlives the cache it was run over.
    """

    mark: int  # the live length the prompt sits behind
    tokens: tuple[int, ...]
    entries: list  # SinkCache.save_tail(mark) right after the prompt ran

    def shared(self, prompt: Sequence[int]) -> int:
        """How many leading tokens of `prompt` this memo holds (at most all but its last: the fork needs
        the logits of a token it runs)."""
        count = 0
        for mine, theirs in zip(self.tokens, prompt[:len(prompt) - 1]):
            if mine != theirs:
                break
            count += 1
        return count


@dataclass(frozen=True)
class ForkRequest:
    """One fork of a group (`StreamingEngine.complete_many`): an instruction and its answer budget."""

    instruction: str
    max_new_tokens: int
    structured: bool = False
    on_done: Callable[[str], None] | None = field(default=None, compare=False)  # its answer, as soon as it has it


def step_runs(runs: Sequence[FeedRun | ForkRun]) -> None:
    """One forward for all `runs` (each on its own cache, one model): each gets the logits it wanted.

    Rows that want a prompt chunk run first, apart from one-token decode rows: padded to a chunk's
    width, a decode row would cost as much as a chunk. On the CPU only chunks of like widths share a
    forward (`rows_of_like_width`); the rest wait for the next.
    """
    from livesum.llm.batched import forward_batch, rows_of_like_width

    wants = [run.want() for run in runs]
    wide = [index for index, (_, tokens) in enumerate(wants) if len(tokens) > 1]
    chosen = wide or list(range(len(runs)))
    if wide:  # prompt chunks of like widths together (padding costs on the CPU), the widest first
        widths = [len(wants[i][1]) for i in wide]
        chosen = [wide[i] for i in rows_of_like_width(widths, runs[0].engine.device)]

    logits = forward_batch(runs[0].engine.model, [wants[i][0] for i in chosen], [wants[i][1] for i in chosen])
    for index, row_logits in zip(chosen, logits):
        runs[index].accept(row_logits)


def prompt_pieces(tokenizer, system_prompt: str) -> tuple[str, str, str]:
    """(head, separator, tail): head + transcript + separator + instruction + tail is a full prompt.

    Rendered once with markers through the tokenizer's chat template; a template that refuses a
    system role gets the system prompt folded into the user turn. Without a template: plain text.
    """
    user = TRANSCRIPT_INTRO + TRANSCRIPT_MARK + "\n\n" + INSTRUCTION_MARK
    if getattr(tokenizer, "chat_template", None):
        conversations = (
            [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}],
            [{"role": "user", "content": system_prompt + "\n\n" + user}],
        )
        for messages in conversations:
            try:
                rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:  # jinja raises its own TemplateError for unsupported roles
                continue
            if TRANSCRIPT_MARK in rendered and INSTRUCTION_MARK in rendered:
                head, rest = rendered.split(TRANSCRIPT_MARK)
                separator, tail = rest.split(INSTRUCTION_MARK)
                return head, separator, tail
    bos = tokenizer.bos_token if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token else ""
    return bos + system_prompt + "\n\n" + TRANSCRIPT_INTRO, "\n\n", "\nAnswer: "


class StreamingEngine:
    """A live transcript in a StreamingLLM cache; summaries and answers fork off it.

    Two ways to drive it. The blocking calls (`feed`, `summarize`, `ask`, `complete`) run a whole
    operation under the engine's lock. The step API (`feed_run`, `fork_run`: `FeedRun`, `ForkRun`)
    advances an operation one forward at a time, so the LM service can interleave the operations of
    every session, preempt a long fork between tokens and batch sessions' steps together. Status
    (`cache_length`, `tokens_seen`, `pinned_summary`) is published as plain values after each step:
    reading it never waits on the model.
    """

    def __init__(self, model: PreTrainedModel, tokenizer, config: EngineConfig, system_prompt: str | None = None) -> None:
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.lock = threading.RLock()
        self.device = next(model.parameters()).device
        head, self._separator, self._tail = prompt_pieces(tokenizer, system_prompt or DEFAULT_SYSTEM_PROMPT)
        head_ids = self.encode(head, user=False)
        self.stop_ids = self._stop_tokens()
        self._pin_open, self._pin_close = self.encode(PINNED_OPEN, user=False), self.encode(PINNED_CLOSE, user=False)
        self._separator_ids, self._tail_ids = self.encode(self._separator, user=False), self.encode(self._tail, user=False)
        pinned_capacity = config.pinned_summary_tokens if config.pin_summary else 0
        if pinned_capacity and pinned_capacity <= len(self._pin_open) + len(self._pin_close):
            raise ValueError(f"pinned_summary_tokens={pinned_capacity} leaves no room for a summary")
        room = max(config.fork_room, max(config.max_summary_tokens, config.max_answer_tokens) + FORK_ROOM)
        self.cache = SinkCache(
            model, n_sink=max(config.n_sink, len(head_ids)), window=config.window,
            evict_chunk=config.evict_chunk, pinned_capacity=pinned_capacity, room=room,
            keep_rotated=config.keep_rotated_keys,
        )
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and self.cache.capacity > limit:
            raise ValueError(
                f"sinks + pinned summary + window + fork room = {self.cache.capacity} positions exceed the "
                f"model's context of {limit}: lower llm.engine.window"
            )
        self.prefill_chunk = min(config.prefill_chunk, config.window)
        self.anti_repetition = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            self.anti_repetition.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if config.no_repeat_ngram_size:
            self.anti_repetition.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        self.loop_guard = LogitsProcessorList([NoRepeatNGramLogitsProcessor(STRUCTURED_LOOP_NGRAM)])
        # Published status: plain values, replaced (never mutated) by the thread that runs the model.
        self.tokens_seen = 0  # transcript tokens fed since the start (the head is not counted)
        self.cache_length = 0  # live entries: at most n_sink + pinned summary + window between operations
        self.pinned_summary: str | None = None
        self.epoch = 0  # bumped by every change of the live cache: a parked fork knows whether it can resume
        self.recent_ids: deque[int] = deque(maxlen=config.window)  # the transcript's latest tokens: drafts' source
        self.prompt_memo: PromptMemo | None = None
        self._last_text = head
        self.ingest(head_ids)
        static = config.static_decode == "on"
        self.static = (StaticDecoder(model, self.cache, config.repetition_penalty, config.no_repeat_ngram_size)
                       if static else None)

    # -- blocking API (each call holds the lock for the whole operation) ---------------------------

    def feed(self, text: str) -> int:
        """Append transcript text (a space is put between pieces that do not bring their own)."""
        return self._run(self.feed_run(text))

    def summarize(self, max_new_tokens: int | None = None) -> str:
        """A rolling summary of the transcript so far; pinned behind the sinks if `pin_summary`."""
        return self._run(self.summary_run(max_new_tokens))

    def ask(self, question: str, max_new_tokens: int | None = None, context: str = "") -> str:
        """An answer about the transcript; the question is user text, cut to `max_question_tokens`.
        `context` goes before it: what the window no longer holds (earlier rolling summaries)."""
        return self._run(self.question_run(question, max_new_tokens, context))

    def complete(self, instruction: str, max_new_tokens: int, *, structured: bool = False) -> str:
        """Any instruction about the transcript (title, key points...), answered off a fork.
        `structured=True` for JSON: it repeats its keys and quotes by design, and the prose penalties
        turned a 1.5B model's JSON into single quotes, bare keys and renamed fields; only a repeated
        run of STRUCTURED_LOOP_NGRAM tokens (a whole object again) is banned."""
        return self._run(self.fork_run(instruction, max_new_tokens, structured=structured))

    def complete_many(self, requests: Sequence[ForkRequest]) -> list[str]:
        """Several forks off the same moment of the stream, decoded together (one forward per step for
        all of them, each on its own copy of the cache): what the notes at the end and at each rolling
        summary ask for. The same answers as one `complete` after another."""
        with self.lock:
            runs = self.fork_group(requests)
            try:
                while not all(run.done for run in runs):
                    step_runs([run for run in runs if not run.done])
            finally:
                for run in runs:
                    run.close()
            return [run.result or "" for run in runs]

    def _run(self, run: FeedRun | ForkRun):
        with self.lock:
            try:
                while not run.done:
                    cache, tokens = run.want()
                    run.accept(self.forward(tokens, cache))
            finally:
                run.close()
            return run.result

    # -- step API: operations the LM service advances a forward at a time ---------------------------

    def feed_run(self, text: str) -> FeedRun:
        """A feed for the LM service to advance a chunk at a time."""
        return FeedRun(self, text)

    def fork_run(self, instruction: str, max_new_tokens: int, *, structured: bool = False,
                 on_text: Callable[[str], None] | None = None, pin: bool = False) -> ForkRun:
        return ForkRun(self, instruction, max_new_tokens, structured=structured, on_text=on_text, pin=pin)

    def fork_group(self, requests: Sequence[ForkRequest]) -> list[ForkRun]:
        """One fork per request, each on its own snapshot of the live cache (with room for its prompt
        and answer), so they decode side by side and never touch the stream."""
        return [ForkRun(self, request.instruction, request.max_new_tokens, structured=request.structured, detached=True,
                        on_done=request.on_done) for request in requests]

    def summary_run(self, max_new_tokens: int | None = None) -> ForkRun:
        return self.fork_run(SUMMARY_INSTRUCTION, max_new_tokens or self.config.max_summary_tokens,
                             pin=self.config.pin_summary)

    def question_run(self, question: str, max_new_tokens: int | None = None, context: str = "",
                     on_text: Callable[[str], None] | None = None) -> ForkRun:
        return self.fork_run(context + self.question_instruction(question), max_new_tokens or self.config.max_answer_tokens,
                             on_text=on_text)

    def question_instruction(self, question: str) -> str:
        """QUESTION_INSTRUCTION around the question cut to its first `max_question_tokens` tokens."""
        ids = self.encode(question.strip())[:self.config.max_question_tokens]
        return QUESTION_INSTRUCTION.format(question=self.tokenizer.decode(ids).strip())

    # -- pieces of an operation (the caller owns the engine for the call) ---------------------------

    def encode(self, text: str, user: bool = True) -> list[int]:
        """Token ids; user text (transcript, questions, instructions) with special tokens split, so it
        cannot open or close a turn. Only the template's own pieces keep their special tokens."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=user)["input_ids"]

    def feed_ids(self, text: str) -> tuple[list[int], str]:
        """Ids of a transcript piece, with a space put in front when neither side brings one."""
        if not text:
            return [], text
        if not text[0].isspace() and not self._last_text[-1].isspace():
            text = " " + text
        return self.encode(text), text

    def fed(self, ids: list[int], text: str) -> None:
        """Bookkeeping once `ids` (from `feed_ids`) are in the cache."""
        if ids:
            self.tokens_seen += len(ids)
            self.recent_ids.extend(ids)
            self._last_text = text

    def chunks(self, ids: list[int]) -> list[list[int]]:
        return [ids[start:start + self.prefill_chunk] for start in range(0, len(ids), self.prefill_chunk)]

    def ingested(self) -> None:
        """Live tokens were written (or evicted): publish the length, and no parked fork resumes as it was
        (nor does any fork reuse a prompt run before)."""
        self.epoch += 1
        self.cache_length = self.cache.length
        self.prompt_memo = None

    def remember_prompt(self, cache: SinkCache, mark: int, epoch: int, prompt: Sequence[int]) -> None:
        """Keep the entries of a fork's prompt, just run behind `mark` in `cache` (the live one or a snapshot
        of it), for the next fork over the same live cache (`reuse_prompt`)."""
        if epoch == self.epoch and len(prompt) >= MIN_REUSED_PROMPT and cache.length == mark + len(prompt):
            self.prompt_memo = PromptMemo(mark, tuple(prompt), cache.save_tail(mark))

    def reuse_prompt(self, cache: SinkCache, mark: int, prompt: Sequence[int]) -> int:
        """Copy the entries of the leading tokens `prompt` shares with the remembered one into `cache` behind
        `mark` (where it sits behind the same live cache), and say how many: those need no forward."""
        memo = self.prompt_memo
        if memo is None or memo.mark != mark:
            return 0
        count = memo.shared(prompt)
        if count < MIN_REUSED_PROMPT:
            return 0
        cache.restore_tail(mark, [None if pair is None else tuple(part[:, :, :count] for part in pair) for pair in memo.entries])
        return count

    def ingest(self, ids: list[int]) -> None:
        """Chunked prefill of live tokens, evicting before each chunk."""
        for chunk in self.chunks(ids):
            self.cache.make_room(len(chunk))
            self.forward(chunk)
            self.ingested()

    def _stop_tokens(self) -> set[int]:
        """EOS ids of the model and tokenizer, plus the template's end-of-turn token."""
        stops: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            stops.update(eos if isinstance(eos, Iterable) else [] if eos is None else [eos])
        tail_ids = self.encode(self._tail, user=False)
        if tail_ids and tail_ids[0] in set(self.tokenizer.all_special_ids):
            stops.add(tail_ids[0])
        return stops

    @torch.inference_mode()
    def forward(self, ids: list[int], cache: SinkCache | None = None) -> torch.Tensor:
        """Run `ids` through the model at the next slots of `cache` (the live one by default); logits of the
        last one (float32)."""
        cache = cache or self.cache
        input_ids = torch.tensor([ids], device=self.device)
        out = self.model(
            input_ids=input_ids, position_ids=cache.positions(len(ids), self.device),
            cache=cache, use_cache=True, logits_to_keep=1,
        )
        return out.logits[0, -1].float()

    def fork_prompt(self, instruction: str, max_new_tokens: int, cache: SinkCache | None = None) -> tuple[list[int], int]:
        """(prompt ids, answer tokens) of a fork that fit the cache's free room: a too long
        instruction loses its front (the ask is usually at the end), then the answer is capped."""
        cache = cache or self.cache
        body = self.encode(self._separator + instruction.strip())
        room = cache.free - len(self._tail_ids) - min(max_new_tokens, MIN_FORK_ANSWER)
        if len(body) > room:
            instruction_ids = self.encode(instruction.strip())
            keep = max(room - len(self._separator_ids), 0)
            body = self._separator_ids + (instruction_ids[len(instruction_ids) - keep:] if keep else [])
        prompt = body + self._tail_ids
        return prompt, max(min(max_new_tokens, cache.free - len(prompt)), 0)

    def pick(self, answer: list[int], logits: torch.Tensor, processors: LogitsProcessorList | None = None) -> int:
        """The greedy next token after `answer`, against repetition: small models loop under greedy
        decoding; only the answer's own tokens count."""
        if answer:
            generated = torch.tensor([answer], device=logits.device)
            logits = (self.anti_repetition if processors is None else processors)(generated, logits[None])[0]
        return int(torch.argmax(logits))

    def draft(self, tail: Sequence[int], count: int) -> list[int]:
        """Up to `count` tokens to check after `tail` (a fork's prompt and answer so far): those that followed
        the latest earlier occurrence of its last few tokens in the transcript window or in `tail` itself.
        An answer copies names and phrases of the meeting, and its own JSON keys, so these often hold."""
        if count <= 0:
            return []
        corpus = [*self.recent_ids, *tail]
        for size in range(DRAFT_NGRAM, MIN_DRAFT_NGRAM - 1, -1):
            if len(tail) < size:
                continue
            key = corpus[-size:]
            for start in range(len(corpus) - size - 1, -1, -1):
                if corpus[start] == key[0] and corpus[start:start + size] == key:
                    return corpus[start + size:start + size + count]
        return []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def pin(self, summary: str) -> None:
        """Re-encode the pinned block behind the sinks with the new summary (cut to fit)."""
        budget = self.cache.pinned_capacity - len(self._pin_open) - len(self._pin_close)
        ids = self._pin_open + self.encode(summary)[:budget] + self._pin_close
        self.cache.replace_pinned(len(ids), lambda: self.forward(ids))
        self.pinned_summary = summary
        self.ingested()


class FeedRun:
    """Transcript text into the live cache, one prefill chunk per step (each chunk is final once run).

    Driven by `want()` (make room, then the cache and the chunk to run) and `accept(logits)` after the
    forward: so the LM service can run the chunks of several sessions' feeds in one batched forward.
    """

    live = True  # writes the live cache: one such operation of an engine at a time

    def __init__(self, engine: StreamingEngine, text: str) -> None:
        self.engine, self.cache = engine, engine.cache
        self.ids, self.text = engine.feed_ids(text)
        self.pending = engine.chunks(self.ids)
        self.result: int | None = None if self.pending else self._done()
        self._mark: int | None = None  # cache length before the chunk being run (after eviction)

    @property
    def done(self) -> bool:
        return self.result is not None

    def want(self) -> tuple[SinkCache, list[int]]:
        if self._mark is None:
            self.cache.make_room(len(self.pending[0]))
            self._mark = self.cache.length
        return self.cache, self.pending[0]

    def accept(self, logits: torch.Tensor | None) -> bool:
        """The wanted chunk is in the cache; True when the whole text is."""
        self.pending.pop(0)
        self._mark = None
        self.engine.ingested()
        if self.pending:
            return False
        self.result = self._done()
        return True

    def _done(self) -> int:
        self.engine.fed(self.ids, self.text)
        return len(self.ids)

    def park(self) -> None:
        """Nothing to save: every chunk run is part of the stream."""

    def close(self) -> None:
        """A feed given up half way keeps the chunks it ran (they are whole tokens of the transcript); a
        chunk whose forward failed part way (some layers written, others not) is rolled back, so the
        cache is whole again and the stream goes on from the last good chunk."""
        if self._mark is not None and not self.done:
            self.cache.truncate(self._mark)
            self._mark = None
            self.engine.ingested()


class ForkRun:
    """One generation behind a cache (prompt chunks, then a token per step), rolled back at the end.

    On the live cache, parking (`park`) copies the fork's entries out and rolls the cache back, so
    another operation of the same engine (a question) can run; the next `want()` puts them back exactly
    when the live cache did not change meanwhile (same `epoch`), or starts the fork again over the newer
    cache when it did. A `detached` fork runs on a snapshot of the live entries, taken at its first step
    (on the thread that runs the model), so it never touches the stream: it needs no parking, and feeds
    and questions go on beside it. The snapshot is freed when the fork ends.
    """

    def __init__(self, engine: StreamingEngine, instruction: str, max_new_tokens: int, *, structured: bool = False,
                 on_text: Callable[[str], None] | None = None, pin: bool = False, detached: bool = False,
                 on_done: Callable[[str], None] | None = None) -> None:
        self.engine, self.instruction, self.max_new_tokens = engine, instruction, max_new_tokens
        self.structured, self.on_text, self.pin, self.on_done = structured, on_text, pin, on_done
        self.live = not detached
        self.cache: SinkCache | None = engine.cache if self.live else None
        self.result: str | None = None
        self.restarts = 0
        self._saved: list | None = None
        self._reset()

    def _reset(self) -> None:
        self.mark: int | None = None  # cache length the fork sits behind, once started
        self.epoch = -1
        self.prompt: list[int] = []
        self.limit = 0
        self.prompted = 0
        self.answer: list[int] = []
        self.cut: str | None = None  # a structured answer cut before an item that repeats an earlier one
        self.draft_tokens = 0  # drafts the next step may check (the LM service sets it for one step)
        self.drafted: list[int] = []  # the drafts the current step runs behind the answer's last token

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def decoding(self) -> bool:
        """Started, past its prompt and not parked: its next step is one token (it can join a decode batch)."""
        return self.mark is not None and self.prompted >= len(self.prompt) and self._saved is None

    def want(self) -> tuple[SinkCache, list[int]]:
        """The cache and the tokens the next forward must run: a prompt chunk, or the last picked token."""
        engine = self.engine
        if self._saved is not None:
            self._unpark()
        if self.mark is None:
            if self.cache is None:  # the live entries only: a live fork of a question may sit behind them
                live = engine.cache_length
                self.cache = engine.cache.snapshot(live, engine.cache.capacity - live)
            self.prompt, self.limit = engine.fork_prompt(self.instruction, self.max_new_tokens, self.cache)
            self.mark, self.epoch = self.cache.length, engine.epoch
            self.prompted = engine.reuse_prompt(self.cache, self.mark, self.prompt)
        if self.prompted < len(self.prompt):
            return self.cache, self.prompt[self.prompted:self.prompted + engine.prefill_chunk]
        room = min(self.draft_tokens, self.limit - len(self.answer) - 1, self.cache.free - 1)
        self.drafted = engine.draft(self.prompt + self.answer, room) if room > 0 else []
        return self.cache, self.answer[-1:] + self.drafted

    def accept(self, logits: torch.Tensor) -> bool:
        """Logits of the wanted tokens' last one (of each of them, [1 + drafts, vocab], when the step ran
        drafts); picks the next token, and the drafts the model itself picks after it. True when the answer
        is complete."""
        engine = self.engine
        if self.prompted < len(self.prompt):
            self.prompted += min(engine.prefill_chunk, len(self.prompt) - self.prompted)
            if self.prompted < len(self.prompt):
                return False
            engine.remember_prompt(self.cache, self.mark, self.epoch, self.prompt)
            if self.limit <= 0:
                return self._finish()
            if engine.static is not None and not self.structured and self.live:  # graphs: whole answer at once
                token = engine.pick([], logits)
                if token not in engine.stop_ids:
                    self.answer = engine.static.decode([token], self.limit, engine.stop_ids)
                return self._finish()
        drafted, self.drafted, self.draft_tokens = self.drafted, [], 0
        rows = logits if logits.dim() == 2 else logits[None]
        if len(rows) != len(drafted) + 1:
            raise ValueError(f"a step with {len(drafted)} drafts needs {len(drafted) + 1} rows of logits, got {len(rows)}")
        processors = engine.loop_guard if self.structured else engine.anti_repetition
        for index, row in enumerate(rows):  # greedy: each row is the model's own pick while the drafts agree with it
            token = engine.pick(self.answer, row, processors)
            if token in engine.stop_ids:
                return self._finish()
            self.answer.append(token)
            if len(self.answer) >= self.limit or self._repeating(token):
                self._tell()
                return self._finish()
            if index == len(drafted) or token != drafted[index]:
                break
        if drafted:  # the cache keeps the step's first token and the drafts that held, not those after
            self.cache.truncate(self.cache.length - len(drafted) + index)
        self._tell()
        return False

    def _repeating(self, token: int) -> bool:
        """A structured answer whose item just closed repeats an earlier one: a loop of near-copies that
        would run to the token limit (`cut_at_repeat`). The answer ends before that item."""
        if not self.structured or "}" not in self.engine.decode([token]):
            return False
        self.cut = cut_at_repeat(self.engine.decode(self.answer))
        return self.cut is not None

    def _tell(self) -> None:
        if self.on_text is not None:
            try:
                self.on_text(self.engine.decode(self.answer))
            except Exception:  # noqa: BLE001 - a listener that went away must not fail the step (or its batch)
                log.debug("answer listener failed", exc_info=True)

    def _finish(self) -> bool:
        self.cache.truncate(self.mark)
        self.result = self.cut if self.cut is not None else self.engine.decode(self.answer)
        self.mark = None
        if not self.live:
            self.cache = None
        if self.pin and self.result and self.live:
            self.engine.pin(self.result)
        if self.on_done is not None:  # a group's fork that is done before the others: its answer goes out now
            try:
                self.on_done(self.result)
            except Exception:  # noqa: BLE001 - a listener must not fail the step (or its batch)
                log.debug("fork listener failed", exc_info=True)
        return True

    def park(self) -> None:
        """Step aside for another operation of this engine: the fork's entries are saved, the cache rolled back."""
        if self.mark is None or self._saved is not None or not self.live:
            return
        self._saved = self.cache.save_tail(self.mark)
        self.cache.truncate(self.mark)

    def _unpark(self) -> None:
        engine, saved, self._saved = self.engine, self._saved, None
        if engine.epoch == self.epoch and self.cache.length == self.mark:
            self.cache.restore_tail(self.mark, saved)
        else:  # the stream moved on: the fork starts again behind it (the tokens so far are discarded)
            self.restarts += 1
            self._reset()

    def close(self) -> None:
        """Give up (or clean up after) the fork: its cache is as before it, whatever step it was at."""
        parked, self._saved = self._saved is not None, None
        if self.mark is not None and not parked:
            self.cache.truncate(self.mark)
        self.mark = None
        if not self.live:
            self.cache = None


def banned_ngram_tokens(answer: list[int], size: int) -> list[int]:
    """Tokens that would repeat an n-gram of `answer` (transformers' NoRepeatNGram rule, on the host)."""
    if size <= 0 or len(answer) + 1 < size:
        return []
    prefix = tuple(answer[len(answer) + 1 - size:])
    return [gram[-1] for gram in zip(*(answer[i:] for i in range(size))) if gram[:-1] == prefix]


class StaticDecoder:
    """Greedy fork decoding on static buffers: on CUDA, one decode step captured in a CUDA graph.

    One step = write the token at a device-tensor slot, attend over a fixed `read_length` (the
    fork's end rounded up to READ_BUCKET, never the whole fork room), repetition penalty and the
    n-gram ban on device (a `seen` mask; banned tokens set from the host, which reads each token
    anyway to stop at end of turn), argmax on device, slot + 1. Shapes and addresses never change
    (the cache never reallocates), so the step is captured once per read length and replayed.
    Off CUDA the same step runs uncaptured (how the tests check it against the eager path).
    """

    READ_BUCKET = 128

    def __init__(self, model: PreTrainedModel, cache: SinkCache, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0) -> None:
        self.model, self.cache = model, cache
        device = next(model.parameters()).device
        vocab = model.get_output_embeddings().weight.shape[0]
        self.capture = device.type == "cuda"
        self.ids = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.slots = torch.zeros(1, dtype=torch.long, device=device)
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.banned = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.penalty, self.ngram = repetition_penalty, no_repeat_ngram_size
        self.dtype = next(model.parameters()).dtype
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None

    @torch.inference_mode()
    def _step(self, read_length: int) -> torch.Tensor:
        """Decode the token in `ids` at slot `slots`; the next token (device), ids and slots moved on."""
        self.seen.index_fill_(0, self.ids.view(-1), True)
        masks = attention_masks(self.model.config, self.slots[None], self.slots + 1, read_length, self.dtype)
        logits = self.model(input_ids=self.ids, position_ids=self.slots[None], attention_mask=masks,
                            cache=self.cache, use_cache=True, logits_to_keep=1).logits[0, -1].float()
        if self.penalty != 1.0:
            penalised = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
            logits = torch.where(self.seen, penalised, logits)
        token = logits.masked_fill(self.banned, float("-inf")).argmax().view(1, 1)
        self.ids.copy_(token)
        self.slots.add_(1)
        return token

    def _graph(self, read_length: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        """The step captured for `read_length` (warmed up on a side stream; state restored after), or
        None if capture fails: then this decoder runs uncaptured from now on (logged once), so a
        driver or model that cannot be captured costs speed, never an answer."""
        if read_length not in self.graphs:
            saved = (self.ids.clone(), self.slots.clone(), self.seen.clone())
            try:
                side = torch.cuda.Stream(self.ids.device)
                side.wait_stream(torch.cuda.current_stream(self.ids.device))
                with torch.cuda.stream(side):
                    for _ in range(2):  # writes at the current slot only: free room, rewritten by the replay
                        self.slots.copy_(saved[1])
                        self._step(read_length)
                torch.cuda.current_stream(self.ids.device).wait_stream(side)
                for tensor, value in zip((self.ids, self.slots, self.seen), saved):
                    tensor.copy_(value)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    token = self._step(read_length)
            except Exception as error:  # noqa: BLE001 - any capture failure falls back to the same step uncaptured
                log.warning("CUDA graph capture failed (%s); decoding without graphs", error)
                torch.cuda.synchronize(self.ids.device)
                for tensor, value in zip((self.ids, self.slots, self.seen), saved):
                    tensor.copy_(value)
                self.capture = False
                return None
            self.graphs[read_length] = (graph, token)
        return self.graphs[read_length]

    def decode(self, answer: list[int], max_new_tokens: int, stop_ids: set[int]) -> list[int]:
        """`answer` (its first token(s) already picked, the last not yet in the cache) continued greedily
        up to `max_new_tokens` or a stop token: the same tokens as the engine's eager loop."""
        cache, answer = self.cache, list(answer)
        read_length = min(cache.capacity, -(-(cache.length + max_new_tokens) // self.READ_BUCKET) * self.READ_BUCKET)
        self.seen.zero_()
        if len(answer) > 1:
            self.seen[torch.tensor(answer[:-1], device=self.seen.device)] = True
        self.ids.fill_(answer[-1])
        self.slots.fill_(cache.length)
        cache.set_static(self.slots, read_length)
        try:
            while len(answer) < max_new_tokens:
                self.banned.zero_()
                banned = banned_ngram_tokens(answer, self.ngram)
                if banned:
                    self.banned[torch.tensor(banned, device=self.banned.device)] = True
                cache.advance(1)  # checks capacity before the write
                captured = self._graph(read_length) if self.capture else None
                if captured is not None:
                    captured[0].replay()
                    next_token = captured[1]
                else:
                    next_token = self._step(read_length)
                token = int(next_token)
                if token in stop_ids:
                    break
                answer.append(token)
        finally:
            cache.set_static(None)
        return answer
