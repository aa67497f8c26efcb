"""minibatch_std under contract: an empty channel or pixel dimension is refused (ValueError); an
empty batch gives an empty output."""
import gankern
import torch
from contract import Case

CASES = [
    Case("minibatch_std_g2_f1", lambda x: gankern.minibatch_std(x, group_size=2, num_channels=1),
         lambda shape, gen: {"x": torch.randn(shape, generator=gen)}, (4, 3, 3, 5),
         ("minibatch_std", "minibatch_std_backward"), layout_args=("x",), expand=("x",),
         empty_refused=lambda shape: shape[1] == 0 or shape[2] == 0 or shape[3] == 0),
    Case("minibatch_std_whole_batch_f2", lambda x: gankern.minibatch_std(x, group_size=None, num_channels=2),
         lambda shape, gen: {"x": torch.randn(shape, generator=gen)}, (3, 4, 2, 3),
         ("minibatch_std", "minibatch_std_backward"), layout_args=("x",),
         empty_refused=lambda shape: shape[1] == 0 or shape[2] == 0 or shape[3] == 0),
]
