# Type stub of the compiled extension kernelcert/_argmax_c.c (see its header for the contract).
from typing import Any

AVAILABLE: int

def argmax_margin_f32(scores: Any, t: int, M: int, K: int, counts: Any, prediction: Any, radius: Any, /) -> bool: ...
