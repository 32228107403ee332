from llem_agent.main import run

run()
