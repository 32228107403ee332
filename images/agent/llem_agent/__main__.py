import sys

from llem_agent.main import main

sys.exit(main())
