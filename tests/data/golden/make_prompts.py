"""Writes prompts.json: hand-made prompts in the layouts of the six benchmark tasks (evaluation/tasks.py), plus a
plain question and a chat request. Written by hand for the golden test; no benchmark row is copied."""

from __future__ import annotations

import json
from pathlib import Path

QA_HEAD = "Answer the question, and only return the final answer. Do NOT Analyze."
QA_SHOTS = [
    ("Which planet is known as the Red Planet?", "Mars."),
    ("What is the capital city of Australia?", "Canberra."),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare."),
]
NQ_HEAD = (
    "Instructions: For each question, answer in no more than 15 words.\n"
    "If the question asks for a person, answer only with the person's name.\n"
    "If it asks for a place, answer only with the location.\n"
    "If it asks for a time, prefer the year as your answer.\n"
    "Keep all answers concise and avoid unnecessary words."
)
NQ_SHOTS = [
    ("who painted the ceiling of the sistine chapel", "Michelangelo"),
    ("when did the first man walk on the moon", "1969"),
    ("where is the eiffel tower located", "Paris"),
]
SQUAD_HEAD = (
    "You are a question answering assistant.\n"
    "Your answer must be an **exact substring from the provided text**.\n"
    "Keep your answer as short as possible (no more than 5 words).\n\n"
    "Examples:\n\n"
    "Question:\nThe lighthouse on the northern cape was built in 1872 from granite quarried on the island. "
    "Its lamp was first lit by a keeper named Thomas Reed. Who first lit the lamp of the lighthouse?\n"
    "Answer:\nThomas Reed\n\n"
    "Question:\nThe river market opens every Saturday at dawn and sells fish, bread and woven baskets. "
    "Traders arrive by boat from the villages upstream. How do traders arrive at the market?\n"
    "Answer:\nby boat"
)
GSM_HEAD = (
    "Question: A baker makes 4 trays of muffins with 6 muffins on each tray. He sells 15 muffins. "
    "How many muffins are left?\n"
    "Let's think step by step\n"
    "The baker makes 4 x 6 = 24 muffins.\n"
    "After selling 15, 24 - 15 = 9 muffins are left.\n"
    "The answer is \\boxed{9}"
)
EN_DE_HEAD = (
    "Translate the following English sentences into German.\n\n"
    "Please translate **only** the content of each sentence without adding any explanations or comments.\n"
    "Your translation should be faithful to the original meaning and written in natural, fluent German.\n\n\n"
    "Now, translate the following sentences into German:"
)
DE_EN_HEAD = (
    "Translate the following German sentences into English.\n\n"
    "Please translate **only** the content of each sentence without adding any explanations or comments.\n"
    "Your translation should be faithful to the original meaning and written in natural, fluent English.\n\n\n"
    "Now, translate the following sentences:"
)


def qa(head: str, shots: list[tuple[str, str]], question: str) -> str:
    body = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in shots)
    return f"{head}\n\n{body}\n\nQuestion: {question}\nAnswer:"


def main() -> None:
    items = [
        {
            "task": "triviaqa",
            "prompt": qa(QA_HEAD, QA_SHOTS, "Which metal has the chemical symbol Fe?"),
            "stop": ["\n"],
            "max_new_tokens": 16,
        },
        {
            "task": "triviaqa",
            "prompt": qa(QA_HEAD, QA_SHOTS, "In which country is the city of Kyoto?"),
            "stop": ["\n"],
            "max_new_tokens": 16,
        },
        {
            "task": "nq",
            "prompt": qa(NQ_HEAD, NQ_SHOTS, "who discovered penicillin"),
            "stop": ["\n"],
            "max_new_tokens": 16,
        },
        {
            "task": "nq",
            "prompt": qa(NQ_HEAD, NQ_SHOTS, "what is the largest ocean on earth"),
            "stop": ["\n"],
            "max_new_tokens": 16,
        },
        {
            "task": "squad",
            "prompt": SQUAD_HEAD + "\n\nQuestion:\nThe old mill stands beside the canal and was "
            "powered by a wooden wheel until 1931, when an electric motor replaced it. What replaced the wooden wheel?"
            "\nAnswer:",
            "stop": ["\n\n", "\nQuestion"],
            "max_new_tokens": 16,
        },
        {
            "task": "squad",
            "prompt": SQUAD_HEAD + "\n\nQuestion:\nThe choir rehearses in the town hall on "
            "Tuesdays and performs in the cathedral each December. Where does the choir perform?\nAnswer:",
            "stop": ["\n\n", "\nQuestion"],
            "max_new_tokens": 16,
        },
        {
            "task": "gsm8k",
            "prompt": GSM_HEAD + "\n\n\nQuestion: Sara has 3 boxes of pencils with 8 pencils in "
            "each box. She gives away 5 pencils. How many pencils does she have now?\nLet's think step by step\n",
            "stop": ["\n\nQuestion:", "\nQuestion:"],
            "boxed": True,
            "max_new_tokens": 32,
        },
        {
            "task": "gsm8k",
            "prompt": GSM_HEAD + "\n\n\nQuestion: A train travels 60 kilometres each hour for 3 "
            "hours. How far does it travel?\nLet's think step by step\n",
            "stop": ["\n\nQuestion:", "\nQuestion:"],
            "boxed": True,
            "max_new_tokens": 32,
        },
        {
            "task": "flores-en-de",
            "prompt": EN_DE_HEAD + "\n\nEnglish: The museum is closed on Mondays.\nGerman:",
            "stop": ["\n"],
            "max_new_tokens": 20,
        },
        {
            "task": "flores-en-de",
            "prompt": EN_DE_HEAD + "\n\nEnglish: My brother likes to read books in the garden.\nGerman:",
            "stop": ["\n"],
            "max_new_tokens": 20,
        },
        {
            "task": "flores-de-en",
            "prompt": DE_EN_HEAD + "\n\nGerman: Der Zug nach Berlin hat zehn Minuten Verspätung.\nEnglish:",
            "stop": ["\n"],
            "max_new_tokens": 20,
        },
        {
            "task": "flores-de-en",
            "prompt": DE_EN_HEAD + "\n\nGerman: Im Winter schneit es oft in den Bergen.\nEnglish:",
            "stop": ["\n"],
            "max_new_tokens": 20,
        },
        {
            "task": "plain",
            "prompt": "Question: What is the boiling point of water in Celsius?\nAnswer:",
            "stop": ["\n"],
            "max_new_tokens": 12,
        },
        {
            "task": "chat",
            "messages": [{"role": "user", "content": "Name three primary colours."}],
            "max_new_tokens": 16,
        },
    ]
    Path(__file__).with_name("prompts.json").write_text(json.dumps(items, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
