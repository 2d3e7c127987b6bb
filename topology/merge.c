/* merging per-rank maps: being written */
