"""LeNet-5 as the 1998 paper built and trained it (LeCun, Bottou, Bengio and Haffner, "Gradient-based learning
applied to document recognition", Proc. IEEE 86(11), 1998): the layers that differ from the modern network in
LeNet5.py (layers.py) and the paper's loss and optimizer (training.py). `python main.py --recipe lecun1998`."""
