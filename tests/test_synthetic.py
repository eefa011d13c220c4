"""support/synthetic.py: the fake digits the tests and `bench --quick` train on are learnable and reproducible."""

import torch

from support.synthetic import synthetic_digits, synthetic_mnist


def test_each_label_lights_a_block_of_its_own():
    images, labels = synthetic_digits(20, seed=0)
    assert images.dtype == torch.uint8 and images.shape == (20, 28, 28) and labels.tolist() == list(range(10)) * 2
    for image, label in zip(images, labels.tolist()):
        row, col = 4 + 6 * (label // 4), 4 + 6 * (label % 4)
        assert (image[row : row + 6, col : col + 6] == 255).all()
        assert (image < 40).sum() == 28 * 28 - 36  # faint noise everywhere else
    assert torch.equal(synthetic_digits(20, seed=0)[0], images) and not torch.equal(synthetic_digits(20, 1)[0], images)


def test_the_splits_differ_and_have_the_asked_sizes():
    mnist = synthetic_mnist(30, 12, seed=4)
    assert [len(t) for t in mnist] == [30, 30, 12, 12]
    assert not torch.equal(mnist.train_images[:12], mnist.test_images)
