"""The serving service: FastAPI + ONNX Runtime, prediction log to Kafka, atomic hot swap."""
