"""Non-streamed reference: vLLM's offline LLM, greedy, on the tier's engine arguments.

    python tests/integration/tier/reference_generate.py CONFIG TIER MAX_TOKENS \
        < prompts.json > texts.json

Reads a JSON list of chat-message lists, prints a JSON list of answers.
"""

import json
import os
import sys

if __name__ == "__main__":  # vLLM spawns processes
    from tierroute.core.config import load_config

    config, tier_name, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tier = load_config(config).tier(tier_name)
    for key, value in tier.env.items():
        os.environ.setdefault(key, value)
    from vllm import LLM, SamplingParams

    llm = LLM(model=tier.model, **tier.engine_args)
    tokenizer = llm.get_tokenizer()
    prompts = []
    for messages in json.load(sys.stdin):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
    greedy = SamplingParams(temperature=0, max_tokens=max_tokens)
    # One at a time, as the tier runs them in the test: a batch could round differently.
    texts = [llm.generate([p], greedy, use_tqdm=False)[0].outputs[0].text for p in prompts]
    print("REFERENCE " + json.dumps(texts))
