"""PowerSGD for Horovod."""
