"""Shared fixtures of the GPU tests."""
import pytest
import torch


@pytest.fixture
def exact_fp32():
    """fp32 on CUDA is only comparable with TF32 off (cuDNN convolutions use it by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
