"""How tc-daemon's models are made (dataset, training, export, evaluation), and the ones that ship.

Importing this package is cheap; TensorFlow and scikit-learn are imported
only by the modules that train.
"""
