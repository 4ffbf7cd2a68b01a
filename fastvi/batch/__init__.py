"""Batch jobs: data files (:mod:`fastvi.batch.io`) and fits with progress,
checkpoints and resume (:mod:`fastvi.batch.jobs`). The command line is
``fastvi fit|predict|score|info`` (:mod:`fastvi.__main__`)."""
