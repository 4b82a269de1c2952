"""The pipeline: the only place that composes steps (docs/architecture.md).

The two itineraries are declared in :mod:`migrate.pipeline.itinerary`; the wave's stages
in :mod:`~migrate.pipeline.stages`, the cutover in :mod:`~migrate.pipeline.cutover`.
"""
