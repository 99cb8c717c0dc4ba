"""Measures that training and evaluation share, below both: pixel metrics (PSNR, SSIM) and the
transformer's teacher-forced code accuracy. `openhart.eval` builds its reports on them and may
import `openhart.train`; training never imports `openhart.eval`."""

from .accuracy import teacher_forced_accuracy
from .pixels import psnr, ssim

__all__ = ["psnr", "ssim", "teacher_forced_accuracy"]
