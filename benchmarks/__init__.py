"""Side-by-side benchmarks of headwater against hand-written code and peer libraries.

Run ``python -m benchmarks --help``; see ``benchmarks/README.md`` for what each scenario
measures and the targets.
"""
