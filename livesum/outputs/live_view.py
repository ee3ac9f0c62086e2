"""Terminal views for live sources (`livesum mic`): an EventSink each.

`LiveView` redraws one rich `Live` screen: committed lines, the current partial (dimmer, replaced
by `Segment.id`), the latest summary, answers, a status line and the question being typed.
`PlainLiveView` prints one line per final event, for pipes, logs and `--quiet`.
All transcript and model text is escaped: "[laughter]" must show and "[/" must not raise.
"""

from __future__ import annotations

from collections import deque

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from livesum.events import Answer, AnswerPart, Error, Event, Notes, Segment, Status, Summary
from livesum.outputs.files import continues, extend_line, timestamp

SHOWN_LINES = 12  # committed lines kept on screen (the files have them all)
SHOWN_ANSWERS = 2


def clock(seconds: float) -> str:
    return timestamp(seconds, ".")[:-4]


def segment_line(segment: Segment) -> str:
    who = f"[bold]{escape(segment.speaker)}:[/bold] " if segment.speaker else ""
    return f"[dim]{clock(segment.start)}[/dim] {who}{escape(segment.text.strip())}"


def status_line(status: Status) -> str:
    parts = [f"{clock(status.position)}"]
    if status.level_db is not None:
        parts.append(f"level {status.level_db:.0f} dBFS")
    if status.dropped_seconds:
        parts.append(f"[red]dropped {status.dropped_seconds:.1f} s[/red]")
    if status.asr_lag is not None:
        parts.append(f"ASR lag {status.asr_lag:.1f} s")
    if status.llm_lag is not None:
        parts.append(f"LLM lag {status.llm_lag:.1f} s")
    if status.cache_tokens is not None:
        parts.append(f"cache {status.cache_tokens} tokens")
    return " · ".join(parts)


class LiveView:
    """The full-screen-ish live view on a TTY; `prompt` is the question line being typed."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.lines: deque[str] = deque(maxlen=SHOWN_LINES)
        self.line: Segment | None = None  # the last line, which a live final may carry on
        self.partial: Segment | None = None
        self.summary = ""
        self.answers: deque[Answer | AnswerPart] = deque(maxlen=SHOWN_ANSWERS)  # a part until its answer comes
        self.status = "starting"
        self.warning = ""
        self.prompt = ""
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)

    def _render(self) -> Group:
        transcript = Text.from_markup("\n".join(self.lines) or "[dim]listening…[/dim]")
        if self.partial is not None and self.partial.text.strip():
            transcript.append("\n")
            transcript.append_text(Text.from_markup(f"[dim italic]{escape(self.partial.text.strip())}[/dim italic]"))
        parts: list[object] = [Panel(transcript, title="transcript", border_style="white")]
        if self.summary:
            parts.append(Panel(Text(self.summary), title="latest summary", border_style="cyan"))
        for answer in self.answers:
            text = Text(answer.text)
            if isinstance(answer, AnswerPart):
                text.append(" …", style="dim")
            parts.append(Panel(text, title=escape(f"Q: {answer.question}"), border_style="green"))
        parts.append(Text.from_markup(self.status))
        if self.warning:
            parts.append(Text.from_markup(f"[yellow]{escape(self.warning)}[/yellow]"))
        parts.append(Text.from_markup(f"[bold]ask›[/bold] {escape(self.prompt)}▌"))
        return Group(*parts)  # type: ignore[arg-type]

    def refresh(self) -> None:
        self.live.update(self._render())

    def set_prompt(self, text: str) -> None:
        self.prompt = text
        self.refresh()

    def handle(self, event: Event) -> None:
        match event:
            case Status(state="started"):
                self.live.start()
                self.status = "listening"
            case Status(state="progress"):
                self.status = status_line(event)
            case Status(state="finished", detail=detail):
                self.status = f"[bold]done:[/bold] {escape(detail)}"
            case Segment(final=True):
                self._show_final(event)
                if self.partial is not None and self.partial.id == event.id:
                    self.partial = None
            case Segment(final=False):
                self.partial = event
            case Summary(text=text):
                self.summary = text
            case Answer() | AnswerPart():
                self._show_answer(event)
            case Error(message=message, fatal=fatal):
                self.warning = f"{'error' if fatal else 'warning'}: {message}"
            case Notes(title=title):
                self.warning = f"notes ready: {title}"
        self.refresh()

    def _show_final(self, segment: Segment) -> None:
        """A final carries on the last line while its sentence goes on (same speaker), else starts one."""
        if self.line is not None and self.lines and continues(self.line, segment):
            self.line = extend_line(self.line, segment)
            self.lines[-1] = segment_line(self.line)
        else:
            self.line = segment
            self.lines.append(segment_line(segment))

    def _show_answer(self, answer: Answer | AnswerPart) -> None:
        """An answer's words as they come: a part replaces the earlier text of the same answer."""
        for index, shown in enumerate(self.answers):
            if answer.id is not None and shown.id == answer.id:
                self.answers[index] = answer
                return
        self.answers.append(answer)

    def close(self) -> None:
        self.live.stop()


class PlainLiveView:
    """One line per final segment, summary, answer and error: for pipes and `--quiet`."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)

    def handle(self, event: Event) -> None:
        match event:
            case Status(state="started"):
                self.console.print("listening (type a question and Enter; Ctrl-C ends and writes the notes)")
            case Status(state="finished", detail=detail):
                self.console.print(f"done: {escape(detail)}")
            case Segment(final=True):
                self.console.print(segment_line(event))
            case Summary(text=text, final=final):
                self.console.print(f"[cyan]{'final summary' if final else 'summary'}:[/cyan] {escape(text)}")
            case Answer(question=question, text=text):
                self.console.print(f"[green]Q: {escape(question)}[/green]\n[green]A:[/green] {escape(text)}")
            case Error(message=message, fatal=fatal):
                self.console.print(f"[red]{'error' if fatal else 'warning'}:[/red] {escape(message)}")
            case Notes(title=title):
                self.console.print(f"notes ready: {escape(title)}")

    def close(self) -> None:
        pass
