"""tc-daemon: real-time traffic classification for community-network gateways.

The gateway runtime: numpy, a TFLite interpreter, prometheus_client and yaml.
Never TensorFlow, Keras or scikit-learn (see models/ for how models are made).
"""
__version__ = "0.1.0"
