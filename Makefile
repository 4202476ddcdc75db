# Shortcuts. The README's two commands are `bash tools/build_book.sh` and `bash tools/test.sh`.
.PHONY: book test nbval exercises install

install:
	bash tools/install.sh

book:
	bash tools/build_book.sh

test:
	bash tools/test.sh

# Instructors: run every solution notebook end to end (CUDA when present, real
# weights when loadable, stand-ins otherwise).
nbval: install
	.venv/bin/python -m pytest solutions

# Authors: execute the solution notebooks on the stand-ins and regenerate chapters/.
exercises: install
	.venv/bin/python -m exercises_lib.generate --execute
