"""`loopline demo`: the whole loop on the embedded stack, with a traffic replay that drifts.

plan.py       what the demo runs: scenario, users who give feedback, the stack's demo settings
simulator.py  predict requests over HTTP, feedback events over Kafka after a delay
watch.py      what the stack reports while it runs: versions, deltas, metrics, registry, retrains
report.py     the summary numbers, computed from what was recorded, and the plot
"""
