from pydask_deploy.cli import main

main()
