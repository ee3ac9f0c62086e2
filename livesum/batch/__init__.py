"""`livesum batch`: many recordings into notes, in this process or on a Ray cluster.

inputs.py finds the recordings (folders, globs, CSV/JSONL manifests), ledger.py keeps
`batch.jsonl` (one row per recording: what is done, under which content and settings),
worker.py is the per-recording work (models loaded once, `runner.run_file` per recording),
local.py runs it here, cluster.py on a pool of Ray actors, run.py plans and reports.
"""
