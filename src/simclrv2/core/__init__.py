"""Primitives below every stage: where a run executes (:mod:`.runtime`: device, threads, seeds,
autocast), batched inference (:mod:`.batched`), classification metrics (:mod:`.metrics`) and the kNN
classifier (:mod:`.knn`). Nothing here imports a stage (``train``, ``eval``, ``inference``)."""
