"""The terminal view: a progress bar over the audio, the transcript scrolling above it, and each
rolling summary as it is made."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from livesum.events import Answer, Error, Event, Notes, Segment, Status, Summary
from livesum.outputs.files import timestamp


class ConsoleView:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[position]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task: TaskID | None = None

    def handle(self, event: Event) -> None:
        match event:
            case Status(state="started", duration=duration):
                self.progress.start()
                self.task = self.progress.add_task("transcribing", total=duration, position="0:00")
            case Status(state="progress", position=position, detail=detail) if self.task is not None:
                stamp = timestamp(position, ".")[:-4]
                self.progress.update(self.task, completed=position, position=stamp, description=detail or "transcribing")
            case Status(state="finished", detail=detail):
                self.progress.stop()
                self.console.print(f"[bold]done:[/bold] {escape(detail)}", highlight=False)
            case Segment(final=True, start=start, text=text, speaker=speaker):
                who = f"[bold]{escape(speaker)}:[/bold] " if speaker else ""
                self.console.print(f"[dim]{timestamp(start, '.')[:-4]}[/dim] {who}{escape(text)}", highlight=False)
            case Summary(start=start, end=end, text=text, final=final):
                label = "final summary" if final else "rolling summary"
                span = f"{timestamp(start, '.')[:-4]}-{timestamp(end, '.')[:-4]}"
                self.console.print(Panel(escape(text), title=f"{label} {span}", border_style="cyan"), highlight=False)
            case Answer(question=question, text=text):
                self.console.print(Panel(escape(text), title=escape(f"Q: {question}"), border_style="green"), highlight=False)
            case Error(message=message, fatal=fatal):
                self.console.print(f"[bold red]{'error' if fatal else 'warning'}:[/bold red] {escape(message)}", highlight=False)
            case Notes(title=title):
                self.console.print(f"[bold]notes ready:[/bold] {escape(title)}", highlight=False)

    def close(self) -> None:
        self.progress.stop()
