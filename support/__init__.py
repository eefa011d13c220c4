"""What the six modules at the root lean on: the command-line contract, run control, files, devices,
processes, the MNIST file format, distortions, recipes, optimizers, figures and resume files."""
