from lamina.launcher import main

main()
