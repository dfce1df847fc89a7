"""Write an input-grounded benchmark dataset: chat prompts that ask the model to repeat or
lightly correct a given passage (the workload where prompt-lookup speculation pays).

Each JSONL line is ``{"prompt": <chat-templated text>, "output_len": N}`` for
``heron bench latency --dataset`` / ``throughput --dataset``. The passages are written for this
file. Usage:

    python benchmarks/make_rewrite_dataset.py --out rewrite.jsonl [--model MODEL]

(no model: the bundled SmolLM2-135M-Instruct, whose chat template renders the prompts).
"""

from __future__ import annotations

import argparse
import json

PASSAGES = [
    "The old lighthouse stood at the end of the harbour wall for more than a century. Every "
    "evening the keeper climbed the spiral stairs, trimmed the wick and polished the great lens "
    "until it shone. Ships coming home through the fog would watch for the slow sweep of its "
    "beam, and fishermen said they could tell the season by the colour of the light on the water.",
    "A paged key-value cache splits each sequence's attention state into fixed-size blocks. A "
    "block table maps the positions of a sequence to the blocks that hold them, so sequences of "
    "very different lengths share one pool of memory without fragmentation, and identical "
    "prompt prefixes can point at the same blocks instead of computing them twice.",
    "To make the bread, mix the flour, salt and yeast in a large bowl, then add warm water a "
    "little at a time until the dough comes together. Knead it for ten minutes on a floured "
    "table, cover it with a cloth and leave it somewhere warm for an hour, until it has doubled "
    "in size. Shape the loaf, let it rise again, and bake it in a hot oven for forty minutes.",
    "The river rises in the hills above the village, where a dozen small springs run together "
    "between the rocks. It winds through meadows and past the mill, widens under the stone "
    "bridge, and slows as it reaches the marshes, where herons stand motionless in the shallows "
    "and wait for the fish that drift with the current toward the sea.",
    "The committee met on Tuesday to review the budget for the coming year. After a long "
    "discussion, the members agreed to increase spending on the library and the public gardens, "
    "to postpone the repairs to the town hall roof until the spring, and to ask the council for "
    "a report on the cost of extending the bus service to the new houses north of the station.",
    "Before the first frost, the gardener lifts the dahlia tubers, shakes off the soil and lays "
    "them in trays of dry sand in the shed. The roses are pruned by a third, the beds are covered "
    "with a thick layer of compost, and the tender herbs are potted up and carried into the "
    "greenhouse, where they will stay until the days grow long again.",
    "Each morning the train left the coast at seven and climbed slowly into the mountains. "
    "Passengers watched the orchards give way to pine forest, then to bare rock and snow. At the "
    "highest station the engine stopped to take on water, and travellers stepped down onto the "
    "platform to drink hot tea and look back at the valley far below.",
    "A good error message names the parameter that was wrong, the value it received and the "
    "values it would have accepted. It is written for the person who will read it at the worst "
    "possible moment, so it avoids jargon, says what to do next, and never blames the user for "
    "a mistake that the program could have prevented.",
]

TASKS = [
    "Repeat the following passage exactly, word for word:",
    "Copy out the following text without changing anything:",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="The JSONL file to write.")
    parser.add_argument("--model", default=None, help="Whose chat template renders the prompts.")
    parser.add_argument("--output-len", type=int, default=160, help="max_tokens of each request.")
    args = parser.parse_args()

    from heron.loader import load_model_source

    tokenizer = load_model_source(args.model).tokenizer
    with open(args.out, "w") as f:
        for i, passage in enumerate(PASSAGES):
            messages = [{"role": "user", "content": f"{TASKS[i % len(TASKS)]}\n\n{passage}"}]
            prompt = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            f.write(json.dumps({"prompt": prompt, "output_len": args.output_len}) + "\n")
    print(f"wrote {len(PASSAGES)} prompts to {args.out}")


if __name__ == "__main__":
    main()
