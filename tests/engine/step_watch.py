"""Which step of a run is underway, for tests that watch what each step does."""

from mei.optimization import MEI


class StepCounter:
    """``step``: how many steps have started (0 before the first). Counts by wrapping
    ``MEI.record_step`` with ``monkeypatch`` for the test; the real step runs."""

    def __init__(self, monkeypatch):
        self.step = 0
        record_step = MEI.record_step

        def counted(mei, *args, **kwargs):
            self.step += 1
            return record_step(mei, *args, **kwargs)

        monkeypatch.setattr(MEI, "record_step", counted)
