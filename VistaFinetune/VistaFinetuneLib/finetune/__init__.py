"""One finetune: plan, staging, the bundle phases, the formal evaluation, the verdict and its verification."""
