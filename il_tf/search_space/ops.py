"""The eight DARTS primitives as Keras layers, in one name -> constructor registry."""

# The DARTS primitive order. Alphas have one column per entry, in this order.
PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
