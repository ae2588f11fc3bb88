"""A made-up fact the real model answers from retrieved context: no model could know the code,
so an answer that has it copied it from the passage. SmolLM2-135M (greedy, bf16 and fp32 alike)
answers QUESTION with "The door code for the Orbin Foods cold storage room is QX-4471."
(20 tokens). Used by the rag path's and the OpenAI surface's end-to-end tests."""

FILENAME = "orbin-facilities.txt"
DOCUMENT_ID = "orbin-facilities"  # derived from the file name by the server
FACT = "QX-4471"
DOCUMENT = (
    "Orbin Foods facilities notice.\n\n"
    f"The door code for the Orbin Foods cold storage room is {FACT}. "
    "Staff who forget the code should ask the facilities desk on the ground floor."
)
QUESTION = "What is the door code for the Orbin Foods cold storage room?"
MAX_TOKENS = 32  # the answer ends at <|im_end|> well before this cap
