"""Special tokens the iLoRA prompt uses (the names of the official code): prompts, checkpoints and
exports name them."""

PAD = "[PAD]"
PH = "[PH]"
HISTORY_EMB = "[HistoryEmb]"
CANS_EMB = "[CansEmb]"
ITEM_EMB = "[ItemEmb]"

#: Order matters: it fixes the ids the tokens get when added to a tokenizer.
PLACEHOLDERS = (PH, HISTORY_EMB, CANS_EMB, ITEM_EMB)
